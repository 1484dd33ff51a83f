"""`enecg predict RECORD...`: the trained ensemble of every task in params on new WFDB records (not a DVC stage)."""

from pathlib import Path

from pipeline.predict import predict_records
from pipeline.report import show_table
from pipeline.stage_one.signals import QCSettings
from pipeline.tasks import task_from_params


def describe(task, value) -> str:
    """A prediction as a person reads it: the value, the class and its probability, or the labels above 0.5."""
    if value is None:
        return "-"
    if task.type == "regression":
        return f"{value[0]:.4g}"
    if task.type == "binary":
        return f"p(1) = {value[0]:.3f}"
    if task.type == "multiclass":
        best = int(value.argmax())
        return f"{task.classes[best]} (p = {value[best]:.3f})"
    return ", ".join(name for name, p in zip(task.classes, value) if p >= 0.5) or "(none above 0.5)"


def run(params: dict, records: list[Path], task_names: list[str]) -> list:
    tasks = {name: task_from_params(name, params["task_definitions"]) for name in task_names}
    prepare = params["prepare"]
    settings = QCSettings(int(prepare["sampling_rate"]), float(prepare["seconds"]), float(prepare["min_seconds"]), float(prepare["flat_threshold_mv"]))
    extract = params["extract"]
    predictions = predict_records([Path(r) for r in records], list(tasks.values()), settings, str(extract.get("device", "auto")), int(extract["batch_size"]))
    show_table("predictions", ["record", "task", "prediction", "excluded because"], [[p.record, p.task, describe(tasks[p.task], p.value), p.reason] for p in predictions])
    return predictions
