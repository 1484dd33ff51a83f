"""The rows one task trains and tests on, shared by fit-heads, fit-gate and evaluate so they always agree.

Rows are corpus rows (= manifest lines). The subject-wise split is made over every record that passed QC,
then each task keeps the rows that have its label. The corpus must have been prepared from this manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from pipeline.corpus import open_corpus
from pipeline.errors import StoreError
from pipeline.manifests import read_manifest
from pipeline.params import CORPUS
from pipeline.splits import Split, make_split
from pipeline.stores import strings
from pipeline.tasks import Task, task_from_params, targets


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


def corpus_split(params: dict, corpus_path: Path = CORPUS) -> tuple[zarr.Group, list, Split]:
    """The corpus, its manifest records, and the split of its QC-passed rows (the same for every task)."""
    records = read_manifest(Path(params["data"]["manifest"]))
    corpus = open_corpus(corpus_path)
    if list(strings(corpus["record_id"])) != [record.record_id for record in records]:
        raise StoreError(f"{corpus_path} was prepared from another manifest than {params['data']['manifest']}; run `enecg prepare`")
    folds = np.array([-1 if record.fold is None else record.fold for record in records])
    return corpus, records, make_split(strings(corpus["subject_id"]), corpus["qc_ok"][:], params["split"], folds)


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
