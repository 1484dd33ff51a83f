"""The evaluation's pictures of one task, in the two forms DVC and people read (written by `enecg evaluate`):

- plot_data/KIND/TASK.json: the tables of pipeline.stage_two.plot_data, one folder per kind, each declared in
  dvc.yaml with its vega template (.dvc/plots/enecg_*.json, or DVC's own `confusion`), so `dvc plots show`
  and `dvc plots diff` draw them for every task type; a kind that does not apply to the task (ROC for a
  regression) writes no file;
- plots/TASK/*.png: the same pictures drawn by matplotlib (pipeline.stage_two.figures), which `enecg report`
  embeds and DVC shows as images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.layout import figures_dir, plot_table_path
from pipeline.stage_two.dataset import TaskData
from pipeline.stage_two.evaluation import Tested, test_candidates
from pipeline.stage_two.figures import write_figures
from pipeline.stage_two.plot_data import plot_tables, training_histories
from pipeline.stores import atomic_path, strings
from pipeline.tasks import Task

KINDS = ("roc", "precision_recall", "calibration", "confusion", "predicted_vs_actual", "gate")


def write_table(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rows, separators=(",", ":")) + "\n")


def write_plots(task: Task, truth: np.ndarray, candidates: dict[str, np.ndarray], weights: np.ndarray, experts: list[str], record_ids,
                histories: dict) -> dict[str, list[Path]]:
    """Every table (plot_data/KIND/TASK.json) and PNG (plots/TASK/*.png) of a task, from its test records'
    targets, candidates' predictions, the MoE gate's weights [n_test, E] and the training curves; stale files
    of kinds that no longer apply are removed."""
    tables = plot_tables(task, truth, candidates, weights, experts, record_ids)
    written = []
    for kind in KINDS:
        path = plot_table_path(kind, task.name)
        path.parent.mkdir(parents=True, exist_ok=True)  # every kind's folder exists: each is a DVC output
        if tables[kind]:
            write_table(path, tables[kind])
            written.append(path)
        elif path.exists():
            path.unlink()
    directory = figures_dir(task.name)
    directory.mkdir(parents=True, exist_ok=True)
    figures = write_figures(directory, task, tables, experts, histories)
    for stale in set(directory.glob("*.png")) - set(figures):
        stale.unlink()
    return {"tables": written, "figures": figures}


def write_task_plots(data: TaskData, tested: Tested | None = None) -> dict[str, list[Path]]:
    """`write_plots` for a task from its artifacts: the candidates' test predictions and gate weights (`tested`,
    else pipeline.stage_two.evaluation.test_candidates) and the curves in heads/*/TASK/meta.json and gates/TASK/."""
    candidates, weights, config = tested if tested is not None else test_candidates(data)
    experts = list(config["experts"])
    record_ids = strings(data.corpus["record_id"])[data.test]
    return write_plots(data.task, data.target[data.test], candidates, weights["moe"], experts, record_ids, training_histories(data.task.name, experts))
