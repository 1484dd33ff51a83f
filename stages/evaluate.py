"""Stage `evaluate`: experts alone, their plain mean and the MoE on the test split -> metrics/TASK.json."""

from pipeline.dataset import load_task_data
from pipeline.ensemble import evaluate_task
from pipeline.params import metrics_path
from pipeline.report import show_metrics
from pipeline.stores import write_json


def run(params: dict, task: str) -> dict:
    report = evaluate_task(load_task_data(params, task), params["evaluate"])
    write_json(metrics_path(task), report)
    show_metrics(report)
    return report
