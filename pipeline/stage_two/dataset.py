"""The rows one task trains and tests on, shared by fit-heads, fit-gate and evaluate so they always agree.

Rows are corpus rows (= manifest lines). The subject-wise split is made over every record that passed QC,
then each task keeps the rows that have its label. The corpus must have been prepared from this manifest.

The gate trains on the experts' predictions for `stacking_rows`, which no model that made them trained on:
the training rows, predicted out-of-fold by k fold heads (the default), or the gate hold-out's rows
(split.gate_folds / gate_fraction), predicted by experts trained on every training row (one model each).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from pipeline.errors import StoreError
from pipeline.layout import CORPUS
from pipeline.splits import corpus_split
from pipeline.stores import strings
from pipeline.tasks import Task, targets, task_from_params


@dataclass
class TaskData:
    task: Task
    corpus: zarr.Group
    target: np.ndarray  # per corpus row
    subjects: np.ndarray  # per corpus row
    train: np.ndarray  # labelled training rows: what experts train on
    test: np.ndarray  # labelled test rows
    fold_of_train: np.ndarray
    gate: np.ndarray  # labelled rows of the gate hold-out (empty: none)

    @property
    def stacking_rows(self) -> np.ndarray:
        """The rows the gate trains on: the gate hold-out's, or (without one) the training rows, out-of-fold."""
        return self.gate if len(self.gate) else self.train

    def folds(self):
        """(fold, rows its model trains on, mask of the stacking rows it predicts): k folds of the training rows,
        each predicting the rows it left out; with a gate hold-out one model on every training row, predicting it."""
        if len(self.gate):
            yield 0, self.train, np.ones(len(self.gate), dtype=bool)
            return
        for fold in range(int(self.fold_of_train.max()) + 1):
            held_out = self.fold_of_train == fold
            yield fold, self.train[~held_out], held_out


def load_task_data(params: dict, task_name: str, corpus_path: Path = CORPUS) -> TaskData:
    task = task_from_params(task_name, params["task_definitions"])
    corpus, records, split = corpus_split(params, corpus_path)
    target, present = targets(task, records)
    subjects = strings(corpus["subject_id"])
    keep = present[split.train]
    train, fold_of_train = split.train[keep], split.fold_of_train[keep]
    test = split.test[present[split.test]]
    gate = split.gate[present[split.gate]]
    if len(train) == 0 or len(test) == 0:
        raise StoreError(f"task {task_name}: no labelled records in the {'train' if len(train) == 0 else 'test'} split")
    if len(split.gate) and len(gate) == 0:
        raise StoreError(f"task {task_name}: no labelled records in the gate hold-out (params.yaml split.gate_folds / gate_fraction)")
    return TaskData(task, corpus, target, subjects, train, test, fold_of_train, gate)
