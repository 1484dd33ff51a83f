"""The experts' saved predictions, heads/BACKBONE/TASK/predictions.npz: what fit-gate and evaluate read.

It holds gate_rows (the stacking rows: see TaskData) with their out-of-fit predictions (`oof`, each row
predicted by a model that did not train on it: the fold head that left it out, or, for a gate hold-out, the
expert's one model) and test_rows with each model's predictions (`test_folds` [k, n_test, K]); the same for the
model each expert started from (`probe_oof`, `probe_test_folds`: the heads' probes, a post-trained network
before fine-tuning); and train_rows, every row the expert's models trained on (early-stopping subjects
included). Post-trained experts (pipeline.stage_two.post_train) write the same file, so fit-gate and evaluate
take them like any other expert. Reading it needs neither torch nor peft, so those stages start quickly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import StoreError
from pipeline.layout import head_dir, post_trained_model
from pipeline.stage_two.dataset import TaskData


def write_predictions(directory: Path, data: TaskData, predictions: dict[str, np.ndarray], trained_rows: np.ndarray | None = None) -> None:
    """`trained_rows`: the rows the expert's models saw (default: every training row)."""
    trained_rows = data.train if trained_rows is None else trained_rows
    np.savez(Path(directory) / "predictions.npz", train_rows=trained_rows, gate_rows=data.stacking_rows, test_rows=data.test, **predictions)


def expert_predictions(data: TaskData, backbones: list[str], prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Stacking-row [n_stacking, E, K] and per-model test [k, n_test, E, K] predictions of every expert (or, with
    prefix "probe_", of the models they started from), checked against the split: every expert must have
    trained on the training rows and predicted the stacking and test rows of this split."""
    oof, test = [], []
    for backbone in backbones:
        path = head_dir(data.task.name, backbone) / "predictions.npz"
        rerun = f"`enecg {expert_command(backbone)} --task {data.task.name} --model {post_trained_model(backbone) or backbone}`"
        if not path.exists():
            raise StoreError(f"{path} does not exist; run {rerun}")
        saved = np.load(path)
        expected = {"train_rows": data.train, "gate_rows": data.stacking_rows, "test_rows": data.test}
        if not all(name in saved and np.array_equal(saved[name], rows) for name, rows in expected.items()):
            raise StoreError(f"{path} was fitted on another split or manifest; rerun {rerun}")
        oof.append(saved[f"{prefix}oof"])
        test.append(saved[f"{prefix}test_folds"])
    return np.stack(oof, axis=1), np.stack(test, axis=2)


def expert_command(expert: str) -> str:
    """The command that makes an expert: fit-heads for a backbone's heads, post-train for a post-trained network."""
    return "post-train" if post_trained_model(expert) else "fit-heads"
