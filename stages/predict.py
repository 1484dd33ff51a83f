"""`enecg predict RECORD...`: the trained ensemble of every task in params on new WFDB records (not a DVC stage).

A table for people (stderr): per record and task the prediction, each expert's own prediction and gate weight,
and whether the record looks like the training records; `--json` prints the same to stdout for programs;
`--out FILE` writes it as CSV or JSON (by the extension); `--plot DIR` draws each record's 12 leads.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pipeline.errors import EnECGError
from pipeline.predict import (
    DISTANCE_RATIO_MAX,
    Prediction,
    Predictor,
    load_records,
    record_path,
)
from pipeline.stage_one.signals import QCSettings
from pipeline.tasks import Task, task_from_params

OUT_FORMATS = (".csv", ".json")
BLOCK = 256  # records read and predicted at a time (bounds the memory of a long list)


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


def as_value(task: Task, value: np.ndarray):
    """The prediction as JSON: the value (regression), p(1) (binary), or the probability of each class."""
    if task.type in ("regression", "binary"):
        return round(float(value[0]), 6)
    return {name: round(float(p), 6) for name, p in zip(task.classes, value)}


def settings_from(params: dict) -> QCSettings:
    prepare = params["prepare"]
    return QCSettings(int(prepare["sampling_rate"]), float(prepare["seconds"]), float(prepare["min_seconds"]), float(prepare["flat_threshold_mv"]))


def run(params: dict, records: list[Path], task_names: list[str], as_json: bool = False, out: Path | None = None, plot: Path | None = None) -> list[Prediction]:
    """Predict, report (table, or JSON on stdout), write `out` and the plots; EnECGError when nothing was predicted."""
    if out is not None and Path(out).suffix.lower() not in OUT_FORMATS:
        raise EnECGError(f"--out {out}: the file name must end in {' or '.join(OUT_FORMATS)} (CSV or JSON)")
    tasks = {name: task_from_params(name, params["task_definitions"]) for name in task_names}
    settings = settings_from(params)
    extract = params["extract"]
    predictor, predictions, excluded, pictures = None, [], {}, []
    paths = list(dict.fromkeys(record_path(r) for r in records))  # rec, rec.hea and rec.dat are one record
    for start in range(0, len(paths), BLOCK):
        loaded, block_excluded = load_records(paths[start : start + BLOCK], settings)
        excluded.update(block_excluded)
        if not loaded:
            continue
        predictor = predictor or Predictor(list(tasks.values()), settings, str(extract.get("device", "auto")), int(extract["batch_size"]))
        block = predictor.predict(list(loaded), np.stack(list(loaded.values())))
        predictions += block
        if plot is not None:
            from pipeline.predict import plot_record

            for name, signal in loaded.items():
                mine = [p for p in block if p.record == name]
                lines = [f"{p.task}: {describe(tasks[p.task], p.value)}" for p in mine]
                try:
                    pictures.append(plot_record(Path(plot), name, signal, settings.sampling_rate, lines, mine[0].flags, taken=pictures))
                except OSError as error:
                    raise EnECGError(f"--plot {plot}: cannot write the picture of {name} ({error})") from None
    predictions += [Prediction(name, task.name, None, reason) for name, reason in excluded.items() for task in tasks.values()]
    report = json_report(predictions, tasks)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        show(predictions, tasks, pictures)
    if out is not None:
        try:
            write_out(Path(out), predictions, tasks, report)
        except OSError as error:
            raise EnECGError(f"--out {out}: cannot write it ({error})") from None
    predicted = len({p.record for p in predictions if p.value is not None})
    if not predicted:
        raise EnECGError(f"none of the {len(excluded)} records could be predicted; each one's reason is given with it")
    return predictions


def json_report(predictions: list[Prediction], tasks: dict[str, Task]) -> dict:
    """One entry per record: excluded (why) or its quality, embedding distances, flags and each task's prediction."""
    records: dict[str, dict] = {}
    for p in predictions:
        entry = records.setdefault(p.record, {"record": p.record, "excluded": p.reason or None, "out_of_distribution": False, "flags": [], "quality": None, "embedding_distance": {}, "tasks": {}})
        if p.value is None:
            continue
        task = tasks[p.task]
        entry["quality"] = p.quality.as_dict() if p.quality else None
        entry["embedding_distance"].update({name: round(ratio, 4) for name, ratio in p.distance.items()})
        entry["flags"] += [flag for flag in p.flags if flag not in entry["flags"]]
        entry["out_of_distribution"] = bool(entry["flags"])
        entry["tasks"][p.task] = {
            "prediction": as_value(task, p.value),
            "text": describe(task, p.value),
            "experts": {name: {"weight": round(p.weights[name], 6), "prediction": as_value(task, value)} for name, value in p.experts.items()},
        }
    entries = list(records.values())
    return {
        "records": entries, "predicted": sum(e["excluded"] is None for e in entries), "excluded": sum(e["excluded"] is not None for e in entries),
        "embedding_distance_max": DISTANCE_RATIO_MAX,
    }


def show(predictions: list[Prediction], tasks: dict[str, Task], pictures: list[Path]) -> None:
    """The table (nothing cut: long cells fold), then the excluded records and the flags, each in full."""
    from rich.markup import escape
    from rich.table import Table

    from pipeline.progress import console

    table = Table(title="predictions")
    for column in ("record", "task", "prediction", "each expert, w = gate weight", "like training?"):
        table.add_column(column, overflow="fold")
    flagged, excluded, previous = {}, {}, None
    order = {name: i for i, name in enumerate(dict.fromkeys(p.record for p in predictions))}
    for p in sorted(predictions, key=lambda p: (order[p.record], list(tasks).index(p.task))):
        if p.value is None:
            excluded[p.record] = p.reason
            continue
        task = tasks[p.task]
        experts = "\n".join(f"{name} {describe(task, value)} w={p.weights[name]:.2f}" for name, value in p.experts.items())
        flags = p.flags
        if flags:
            flagged[p.record] = flags
        verdict = "NO: out of distribution" if flags else "yes"
        if previous is not None and p.record != previous:
            table.add_section()
        table.add_row(escape(p.record) if p.record != previous else "", p.task, escape(describe(task, p.value)), escape(experts), verdict)
        previous = p.record
    if table.rows:
        console.print(table)
    for record, flags in flagged.items():
        console.print(f"[bold yellow]out of distribution[/] {escape(record)}: " + escape("; ".join(flags)), soft_wrap=True)
    for record, reason in excluded.items():
        console.print(f"[bold red]excluded[/] {escape(record)}: {escape(reason)}", soft_wrap=True)
    for picture in pictures:
        console.print(f"wrote {escape(str(picture))}", soft_wrap=True)


def write_out(path: Path, predictions: list[Prediction], tasks: dict[str, Task], report: dict) -> None:
    """CSV (one row per record and task) or JSON (the --json report), by the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(report, indent=2) + "\n")
        return
    rows = []
    for p in predictions:
        task = tasks[p.task]
        row = {"record": p.record, "task": p.task, "prediction": describe(task, p.value) if p.value is not None else "", "excluded": p.reason}
        if p.value is not None:
            value = as_value(task, p.value)
            row.update({"value": value} if not isinstance(value, dict) else {f"p_{name}": v for name, v in value.items()})
            for name, expert in p.experts.items():
                row[f"{name}_weight"] = round(p.weights[name], 6)
                row[f"{name}_prediction"] = describe(task, expert)
            row["out_of_distribution"] = p.out_of_distribution
            row["flags"] = "; ".join(p.flags)
            if p.quality:
                row.update({f"quality_{k}": v for k, v in p.quality.as_dict().items() if k not in ("ok", "reasons")})
            row.update({f"{name}_distance": round(ratio, 4) for name, ratio in p.distance.items()})
        rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
