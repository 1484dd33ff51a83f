"""Stage `evaluate`: experts alone, their plain mean and the MoE on the test split -> metrics/TASK.json
and the per-record test predictions -> plots/TASK/predictions.csv."""

import csv

from pipeline.dataset import load_task_data
from pipeline.evaluation import evaluate_task
from pipeline.params import metrics_path, plots_path
from pipeline.report import show_metrics
from pipeline.stores import atomic_path, write_json


def run(params: dict, task: str) -> dict:
    report, rows = evaluate_task(load_task_data(params, task), params["evaluate"])
    write_json(metrics_path(task), report)
    with atomic_path(plots_path(task)) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    show_metrics(report)
    return report
