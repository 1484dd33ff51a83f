"""The experts' saved predictions, heads/TASK/BACKBONE/predictions.npz: what fit-gate and evaluate read.

It holds train_rows with their out-of-fold predictions (`oof`, each row predicted by the fold model that did
not train on it) and test_rows with each fold model's predictions (`test_folds` [k, n_test, K]); the same for
the probe each head started from (`probe_oof`, `probe_test_folds`). Reading it needs neither torch nor peft,
so the gate and evaluation stages start quickly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import StoreError
from pipeline.layout import head_dir
from pipeline.stage_two.dataset import TaskData


def write_predictions(directory: Path, data: TaskData, predictions: dict[str, np.ndarray]) -> None:
    np.savez(Path(directory) / "predictions.npz", train_rows=data.train, test_rows=data.test, **predictions)


def expert_predictions(data: TaskData, backbones: list[str], prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold [n_train, E, K] and per-fold test [k, n_test, E, K] predictions of every expert (or, with
    prefix "probe_", of the probes the heads started from), checked against the split."""
    oof, test = [], []
    for backbone in backbones:
        path = head_dir(data.task.name, backbone) / "predictions.npz"
        if not path.exists():
            raise StoreError(f"{path} does not exist; run `enecg fit-heads --task {data.task.name} --model {backbone}`")
        saved = np.load(path)
        if not (np.array_equal(saved["train_rows"], data.train) and np.array_equal(saved["test_rows"], data.test)):
            raise StoreError(f"{path} was fitted on another split or manifest; rerun `enecg fit-heads --task {data.task.name} --model {backbone}`")
        oof.append(saved[f"{prefix}oof"])
        test.append(saved[f"{prefix}test_folds"])
    return np.stack(oof, axis=1), np.stack(test, axis=2)
