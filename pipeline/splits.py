"""Subject-wise splits: a held-out test set, k folds of the training subjects for out-of-fold predictions, and
an optional gate hold-out.

Records of one subject never straddle the test split or the folds. The test split is the same for every
task (it is made over all usable records, before any label is looked at), so the gate and the evaluation
of one task never see a test subject of another. Three methods (params.yaml `split`):

- `subject`: a seeded fraction of subjects is held out for testing (the default);
- `fold`: the manifest's `fold` column, e.g. PTB-XL strat_fold 1-8 train, 10 test (`train_folds`, `test_folds`);
- `cv` (EnECG's reported protocol): k seeded subject-wise folds, fold `test_fold` is the test set;
  `enecg cross-validate` runs stage two once per test fold and reports the mean and std over them.

The gate hold-out (`gate_folds` for `fold`, e.g. PTB-XL's fold 9; `gate_fraction` of the training subjects
otherwise) is a third set of subjects, neither training nor test: no expert trains on it (nor does stage-one
pretraining), so every expert's predictions for it are out-of-sample and the gate trains on them. It is what
makes stacking an expert fine-tuned on the labels (post-training) leak-free; without one the gate trains on
the heads' out-of-fold predictions, as before.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from pipeline.errors import ManifestError, StoreError
from pipeline.layout import CORPUS
from pipeline.manifests import read_manifest
from pipeline.stores import open_corpus, strings


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # corpus row indices
    test: np.ndarray
    fold_of_train: np.ndarray  # fold number (0..k-1) of each train row, for out-of-fold predictions
    gate: np.ndarray  # the gate hold-out's corpus rows (empty: none), disjoint from train and test


def make_split(subjects: np.ndarray, usable: np.ndarray, settings: dict, folds: np.ndarray | None = None) -> Split:
    """Split the usable rows by subject according to params.yaml `split`."""
    rows = np.flatnonzero(usable)
    groups = subjects[rows]
    method = settings.get("method", "subject")
    if method == "subject":
        splitter = GroupShuffleSplit(n_splits=1, test_size=float(settings.get("test_fraction", 0.2)), random_state=int(settings.get("seed", 0)))
        train_pos, test_pos = next(splitter.split(rows, groups=groups))
        train, test = rows[train_pos], rows[test_pos]
    elif method == "cv":
        k = int(settings.get("k", 3))
        if len(set(groups)) < k:
            raise ManifestError(f"too few subjects for {k}-fold cross-validation: {len(set(groups))}")
        outer = list(GroupKFold(n_splits=k, shuffle=True, random_state=int(settings.get("seed", 0))).split(rows, groups=groups))
        train_pos, test_pos = outer[int(settings.get("test_fold", 0))]
        train, test = rows[np.sort(train_pos)], rows[np.sort(test_pos)]
    elif method == "fold":
        if folds is None or np.any(folds[rows] < 0):
            raise ManifestError("split.method is 'fold' but some manifest records have no 'fold' field")
        train = rows[np.isin(folds[rows], settings["train_folds"])]
        test = rows[np.isin(folds[rows], settings["test_folds"])]
        gate = rows[np.isin(folds[rows], settings.get("gate_folds", []))]
    else:
        raise ManifestError(f"params.yaml: split.method is {method!r}; use 'subject', 'fold' or 'cv'")
    if method != "fold":
        train, gate = hold_out_subjects(train, subjects, float(settings.get("gate_fraction", 0.0)), int(settings.get("seed", 0)))
    for (name, one), (other, two) in itertools.combinations((("train", train), ("gate", gate), ("test", test)), 2):
        shared = set(subjects[one]) & set(subjects[two])
        if shared:
            raise ManifestError(f"subjects {sorted(str(s) for s in shared)[:5]} have records in both the {name} and the {other} folds; folds must be subject-wise")
    k = int(settings.get("k", 3))
    if len(set(subjects[train])) < k or len(test) == 0:
        raise ManifestError(f"too few subjects to split: {len(set(subjects[train]))} training subjects for k={k}, {len(test)} test records")
    fold_of_train = np.empty(len(train), dtype=np.int64)
    kfold = GroupKFold(n_splits=k, shuffle=True, random_state=int(settings.get("seed", 0)))
    for fold, (_, held_out) in enumerate(kfold.split(train, groups=subjects[train])):
        fold_of_train[held_out] = fold
    return Split(train=train, test=test, fold_of_train=fold_of_train, gate=gate)


def hold_out_subjects(rows: np.ndarray, subjects: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) rows: a seeded `fraction` of the subjects of `rows` held out (none when fraction is 0)."""
    if fraction <= 0:
        return rows, rows[:0]
    kept, held = next(GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed).split(rows, groups=subjects[rows]))
    return rows[np.sort(kept)], rows[np.sort(held)]


def corpus_split(params: dict, corpus_path: Path = CORPUS) -> tuple[zarr.Group, list, Split]:
    """The corpus, its manifest records, and the split of its QC-passed rows (the same for every task)."""
    records = read_manifest(Path(params["data"]["manifest"]))
    corpus = open_corpus(corpus_path)
    if list(strings(corpus["record_id"])) != [record.record_id for record in records]:
        raise StoreError(f"{corpus_path} was prepared from another manifest than {params['data']['manifest']}; run `enecg prepare`")
    folds = np.array([-1 if record.fold is None else record.fold for record in records])
    return corpus, records, make_split(strings(corpus["subject_id"]), corpus["qc_ok"][:], params["split"], folds)
