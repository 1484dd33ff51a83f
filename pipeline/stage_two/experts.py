"""Stage two, first half: one expert per backbone = k fold heads, each fitted fresh on the other folds' rows
(with a gate hold-out: one head, fitted on every training row; see TaskData.folds).

Artifacts, heads/BACKBONE/TASK/ (written under a temporary name and renamed when complete):
- fold0..k-1/: head.json, base.safetensors, adapter/ (see pipeline.stage_two.heads);
- predictions.npz: the stacking rows' out-of-fold and per-fold test predictions (see pipeline.stage_two.predictions);
- meta.json: provenance and every fold's training curves (train and held-out loss per epoch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from pipeline.errors import StoreError
from pipeline.progress import progress_bar
from pipeline.stage_two.dataset import TaskData
from pipeline.stage_two.heads import fit_head, load_head, predict, save_head
from pipeline.stage_two.predictions import write_predictions
from pipeline.stores import atomic_path


@dataclass
class ExpertFit:
    models: list
    predictions: dict[str, np.ndarray]  # oof, test_folds, probe_oof, probe_test_folds
    histories: list[dict[str, list[float]]]


def fit_expert(data: TaskData, embeddings: zarr.Array, settings: dict) -> ExpertFit:
    """A fresh head per fold: out-of-fold predictions for the stacking rows, each fold model's on the test rows."""
    stacking = data.stacking_rows
    rows = np.union1d(np.union1d(data.train, stacking), data.test)  # sorted; only the labelled rows are held in memory
    block = embeddings.oindex[rows]
    if not np.isfinite(block).all():
        raise StoreError("embeddings hold NaN for records that passed QC; the embedding store does not match the corpus")
    take = lambda selection: block[np.searchsorted(rows, selection)]  # noqa: E731
    folds = list(data.folds())
    k, n_stacking, n_test, out = len(folds), len(stacking), len(data.test), data.task.out_dim
    predictions = {
        "oof": np.zeros((n_stacking, out), np.float32), "probe_oof": np.zeros((n_stacking, out), np.float32),
        "test_folds": np.zeros((k, n_test, out), np.float32), "probe_test_folds": np.zeros((k, n_test, out), np.float32),
    }
    models, histories = [], []
    test_x = take(data.test)
    with progress_bar(f"heads {data.task.name}: folds", k) as advance:
        for fold, fit_rows, held_out in folds:
            fitted = fit_head(data.task, take(fit_rows), data.target[fit_rows], data.subjects[fit_rows], settings, seed=int(settings["seed"]) + fold)
            held_out_x = take(stacking[held_out])
            for prefix, model in (("", fitted.model), ("probe_", fitted.probe)):
                predictions[f"{prefix}oof"][held_out] = predict(data.task, model, held_out_x)
                predictions[f"{prefix}test_folds"][fold] = predict(data.task, model, test_x)
            models.append(fitted.model)
            histories.append(fitted.history)
            advance()
    return ExpertFit(models, predictions, histories)


def save_expert(fit: ExpertFit, data: TaskData, directory: Path, meta: dict) -> None:
    with atomic_path(directory) as tmp:
        tmp.mkdir(parents=True)
        for fold, model in enumerate(fit.models):
            save_head(model, tmp / f"fold{fold}")
        write_predictions(tmp, data, fit.predictions)
        (tmp / "meta.json").write_text(json.dumps({**meta, "histories": fit.histories}, indent=2, default=str))


def load_expert_heads(directory: Path) -> list:
    folds = sorted(directory.glob("fold*"))
    if not folds:
        raise StoreError(f"{directory} holds no trained heads; run `enecg fit-heads`")
    return [load_head(fold) for fold in folds]
