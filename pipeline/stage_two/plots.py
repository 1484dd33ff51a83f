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

from pipeline.stage_two.dataset import TaskData
from pipeline.stage_two.evaluation import test_candidates
from pipeline.stage_two.figures import write_figures
from pipeline.stage_two.plot_data import plot_tables, training_histories
from pipeline.stores import atomic_path, strings

PLOT_DATA = Path("plot_data")
FIGURES = Path("plots")
KINDS = ("roc", "precision_recall", "calibration", "confusion", "predicted_vs_actual", "gate")


def table_path(kind: str, task: str) -> Path:
    return PLOT_DATA / kind / f"{task}.json"


def figures_dir(task: str) -> Path:
    return FIGURES / task


def write_table(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rows, separators=(",", ":")) + "\n")


def write_task_plots(data: TaskData) -> dict[str, list[Path]]:
    """Every table and PNG of the task on its test records; stale files of kinds that no longer apply go."""
    task = data.task
    candidates, weights, config = test_candidates(data)
    experts = list(config["experts"])
    truth = data.target[data.test]
    record_ids = strings(data.corpus["record_id"])[data.test]
    tables = plot_tables(task, truth, candidates, weights["moe"], experts, record_ids)
    written = []
    for kind in KINDS:
        path = table_path(kind, task.name)
        path.parent.mkdir(parents=True, exist_ok=True)  # every kind's folder exists: each is a DVC output
        if tables[kind]:
            write_table(path, tables[kind])
            written.append(path)
        elif path.exists():
            path.unlink()
    directory = figures_dir(task.name)
    directory.mkdir(parents=True, exist_ok=True)
    figures = write_figures(directory, task, tables, experts, training_histories(task.name, experts))
    for stale in set(directory.glob("*.png")) - set(figures):
        stale.unlink()
    return {"tables": written, "figures": figures}
