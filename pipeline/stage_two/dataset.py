"""The rows one task trains and tests on, shared by fit-heads, fit-gate and evaluate so they always agree.

Rows are corpus rows (= manifest lines). The subject-wise split is made over every record that passed QC,
then each task keeps the rows that have its label. The corpus must have been prepared from this manifest.
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
    train: np.ndarray  # labelled training rows
    test: np.ndarray  # labelled test rows
    fold_of_train: np.ndarray

    def folds(self):
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
    if len(train) == 0 or len(test) == 0:
        raise StoreError(f"task {task_name}: no labelled records in the {'train' if len(train) == 0 else 'test'} split")
    return TaskData(task, corpus, target, subjects, train, test, fold_of_train)
