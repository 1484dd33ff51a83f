"""Prediction tasks: what a label field means, how it becomes a training target, and how outputs combine.

Four task types (their losses and output spaces: pipeline.stage_two.losses). Heads output, and the ensemble
combines, in the space where a weighted sum is meaningful:
- regression: the value itself (heads learn a standardised target and undo the scaling);
- binary: the probability of class 1, [N, 1];
- multiclass: class probabilities, [N, K] (the MoE is then a proper mixture of the experts' distributions);
- multilabel: per-label probabilities, [N, K].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import ManifestError
from pipeline.manifests import ManifestRecord

TASK_TYPES = ("regression", "binary", "multiclass", "multilabel")


@dataclass(frozen=True)
class Task:
    name: str
    type: str
    label: str
    classes: tuple[str, ...] = ()

    @property
    def out_dim(self) -> int:
        return len(self.classes) if self.type in ("multiclass", "multilabel") else 1


def task_from_params(name: str, definitions: dict) -> Task:
    """The task `name` from params.yaml `task_definitions`, validated."""
    if name not in definitions:
        raise ManifestError(f"params.yaml: unknown task {name!r}; task_definitions defines {sorted(definitions)}")
    spec = definitions[name] or {}
    kind = spec.get("type")
    if kind not in TASK_TYPES:
        raise ManifestError(f"params.yaml: task_definitions.{name}.type is {kind!r}; use one of {list(TASK_TYPES)}")
    classes = tuple(str(c) for c in spec.get("classes", ()))
    if kind in ("multiclass", "multilabel") and len(classes) < 2:
        raise ManifestError(f"params.yaml: task_definitions.{name}.classes must list at least 2 classes for a {kind} task")
    return Task(name=name, type=kind, label=str(spec.get("label", name)), classes=classes)


def _bad(record: ManifestRecord, task: Task, value, expected: str) -> ManifestError:
    return ManifestError(f"manifest line {record.line} (record {record.record_id}): label {task.label!r} = {value!r} is not {expected} for {task.type} task {task.name!r}")


def targets(task: Task, records: list[ManifestRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Targets for every record, and a mask of records that have the label.

    regression/binary -> float [N]; multiclass -> int class index [N]; multilabel -> float multi-hot [N, K].
    """
    count = len(records)
    present = np.zeros(count, dtype=bool)
    if task.type == "multilabel":
        values = np.zeros((count, len(task.classes)), dtype=np.float32)
    elif task.type == "multiclass":
        values = np.full(count, -1, dtype=np.int64)
    else:
        values = np.full(count, np.nan, dtype=np.float32)
    index = {name: i for i, name in enumerate(task.classes)}
    for row, record in enumerate(records):
        value = record.labels.get(task.label)
        if value is None:
            continue
        if task.type == "regression":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _bad(record, task, value, "a number")
            values[row] = value
        elif task.type == "binary":
            if value not in (0, 1, True, False) or isinstance(value, str):
                raise _bad(record, task, value, "0/1 or true/false")
            values[row] = float(value)
        elif task.type == "multiclass":
            key = str(value)
            if key not in index or isinstance(value, (bool, tuple)):
                raise _bad(record, task, value, f"one of {list(task.classes)}")
            values[row] = index[key]
        else:
            if not isinstance(value, tuple) or any(item not in index for item in value):
                raise _bad(record, task, value, f"a list drawn from {list(task.classes)}")
            values[row, [index[item] for item in value]] = 1.0
        present[row] = True
    return values, present
