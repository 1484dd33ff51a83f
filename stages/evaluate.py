"""Stage `evaluate`: probes, experts, their plain mean and the MoE on the test split -> metrics/TASK.json (every
metric with its interval, paired differences, bootstrap, gate weights), the pictures (plot_data/KIND/TASK.json
for DVC's plots, plots/TASK/*.png), and metrics.json: the headline of every task, small enough for
`dvc metrics show` and `dvc exp show` to stay readable."""

import json

from pipeline.layout import SUMMARY, metrics_path
from pipeline.progress import console
from pipeline.report import show_metrics
from pipeline.stage_one.backbones import default_checkpoint, seen_corpus_warning
from pipeline.stage_two.dataset import load_task_data
from pipeline.stage_two.evaluation import evaluate_task, test_candidates
from pipeline.stage_two.metrics import primary_metric
from pipeline.stage_two.plots import write_task_plots
from pipeline.stores import write_json
from pipeline.tasks import Task


def checkpoint_warnings(params: dict) -> list[str]:
    """A warning for each backbone whose published checkpoint was trained on the manifest's corpus (params
    `data.corpus`): its test records may have been that checkpoint's training records."""
    corpus = params["data"].get("corpus")
    found = (seen_corpus_warning(name, corpus, default_checkpoint(name)) for name in params["backbones"])
    return [warning for warning in found if warning]


def run(params: dict, task: str) -> dict:
    data = load_task_data(params, task)
    tested = test_candidates(data)  # once, for the metrics and the plots
    report = evaluate_task(data, params["evaluate"], tested)
    report["warnings"] = checkpoint_warnings(params)
    write_json(metrics_path(task), report)
    write_task_plots(data, tested)  # plot_data/KIND/TASK.json (DVC plots) and plots/TASK/*.png (matplotlib)
    show_metrics(report)
    for warning in report["warnings"]:
        console.print(f"[bold yellow]warning:[/] {warning}")
    return report


def headline(report: dict) -> dict:
    """A task's headline: its primary metric for the MoE, the plain mean and the best expert, and the paired
    differences with their intervals (all in metrics/TASK.json)."""
    metric, _ = primary_metric(Task(report["task"], report["type"], label=""))
    models = report["models"]
    return {
        "metric": metric,
        "moe": models["moe"][metric]["value"],
        "mean": models["mean"][metric]["value"],
        "best_expert": models[f"expert:{report['best_expert']}"][metric]["value"],
        "paired": {pair: report["paired"][pair][metric] for pair in report["paired"]},
        "bootstrap": {key: report["bootstrap"][key] for key in ("unit", "resamples_used", "labels_used")},
    }


def write_summary(params: dict) -> dict:
    """metrics.json from the metrics/TASK.json of every task in params that has been evaluated."""
    summary = {task: headline(json.loads(metrics_path(task).read_text())) for task in params["tasks"] if metrics_path(task).exists()}
    write_json(SUMMARY, summary)
    return summary
