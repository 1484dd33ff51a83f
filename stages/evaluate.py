"""Stage `evaluate`: experts alone, their plain mean and the MoE on the test split -> metrics/TASK.json
and the per-record test predictions -> plots/TASK/predictions.csv."""

import csv

from pipeline.layout import metrics_path, plots_path
from pipeline.progress import console
from pipeline.report import show_metrics
from pipeline.stage_one.backbones import default_checkpoint, seen_corpus_warning
from pipeline.stage_two.dataset import load_task_data
from pipeline.stage_two.evaluation import evaluate_task
from pipeline.stores import atomic_path, write_json


def checkpoint_warnings(params: dict) -> list[str]:
    """A warning for each backbone whose published checkpoint was trained on the manifest's corpus (params
    `data.corpus`): its test records may have been that checkpoint's training records."""
    corpus = params["data"].get("corpus")
    found = (seen_corpus_warning(name, corpus, default_checkpoint(name)) for name in params["backbones"])
    return [warning for warning in found if warning]


def run(params: dict, task: str) -> dict:
    report, rows = evaluate_task(load_task_data(params, task), params["evaluate"])
    report["warnings"] = checkpoint_warnings(params)
    write_json(metrics_path(task), report)
    with atomic_path(plots_path(task)) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    show_metrics(report)
    for warning in report["warnings"]:
        console.print(f"[bold yellow]warning:[/] {warning}")
    return report
