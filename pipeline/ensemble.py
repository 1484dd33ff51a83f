"""Stage two: experts (one LoRA head per backbone, k-fold) -> gate on their out-of-fold predictions -> evaluation.

Artifacts:
- heads/TASK/BACKBONE/: fold0..k-1/ (head.json, base.safetensors, adapter/), predictions.npz (train rows and
  their out-of-fold predictions, test rows and the mean of the fold models' predictions), meta.json;
- gates/TASK/: gate.safetensors, gate.json (experts in order, gate settings, provenance).
Each directory is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from safetensors.torch import load_file, save_file

from pipeline.dataset import TaskData
from pipeline.errors import StoreError
from pipeline.gate import Gate, combine, fit_gate, gate_input, gate_weights, lead_features
from pipeline.heads import base_state, fit_head, load_head, predict, save_head
from pipeline.metrics import bootstrap_metrics, per_label_auroc
from pipeline.params import gate_dir, head_dir
from pipeline.progress import progress_bar
from pipeline.stores import atomic_path, provenance, strings

READ_BLOCK = 1024  # corpus rows read at a time for gate features


@dataclass
class ExpertFit:
    models: list
    oof: np.ndarray
    test: np.ndarray
    losses: list[list[float]]


def fit_expert(data: TaskData, embeddings: zarr.Array, settings: dict) -> ExpertFit:
    """A fresh head per fold: out-of-fold predictions for the training rows, fold-mean predictions on test."""
    rows = np.union1d(data.train, data.test)  # sorted; only the labelled rows are held in memory
    block = embeddings.oindex[rows]
    take = lambda selection: block[np.searchsorted(rows, selection)]  # noqa: E731
    if not np.isfinite(block).all():
        raise StoreError("embeddings hold NaN for records that passed QC; the embedding store does not match the corpus")
    oof = np.zeros((len(data.train), data.task.out_dim), dtype=np.float32)
    test = np.zeros((len(data.test), data.task.out_dim), dtype=np.float32)
    models, losses = [], []
    folds = list(data.folds())
    with progress_bar(f"heads {data.task.name}: folds", len(folds)) as advance:
        for fold, fit_rows, held_out in folds:
            model, history = fit_head(data.task, take(fit_rows), data.target[fit_rows], data.subjects[fit_rows], settings, seed=int(settings["seed"]) + fold)
            oof[held_out] = predict(data.task, model, take(data.train[held_out]))
            test += predict(data.task, model, take(data.test)) / len(folds)
            models.append(model)
            losses.append(history)
            advance()
    return ExpertFit(models, oof, test, losses)


def save_expert(fit: ExpertFit, data: TaskData, directory: Path, meta: dict) -> None:
    with atomic_path(directory) as tmp:
        tmp.mkdir(parents=True)
        for fold, model in enumerate(fit.models):
            save_head(model, base_state(model), tmp / f"fold{fold}")
        np.savez(tmp / "predictions.npz", train_rows=data.train, oof=fit.oof, test_rows=data.test, test=fit.test)
        (tmp / "meta.json").write_text(json.dumps({**meta, "train_losses": fit.losses}, indent=2, default=str))


def load_expert_heads(directory: Path) -> list:
    folds = sorted(directory.glob("fold*"))
    if not folds:
        raise StoreError(f"{directory} holds no trained heads; run `enecg fit-heads`")
    return [load_head(fold) for fold in folds]


def expert_predictions(data: TaskData, backbones: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold [n_train, E, K] and test [n_test, E, K] predictions of every expert, checked against the split."""
    oof, test = [], []
    for backbone in backbones:
        path = head_dir(data.task.name, backbone) / "predictions.npz"
        if not path.exists():
            raise StoreError(f"{path} does not exist; run `enecg fit-heads --task {data.task.name} --model {backbone}`")
        saved = np.load(path)
        if not (np.array_equal(saved["train_rows"], data.train) and np.array_equal(saved["test_rows"], data.test)):
            raise StoreError(f"{path} was fitted on another split or manifest; rerun `enecg fit-heads --task {data.task.name} --model {backbone}`")
        oof.append(saved["oof"])
        test.append(saved["test"])
    return np.stack(oof, axis=1), np.stack(test, axis=1)


def gate_lead_features(corpus: zarr.Group, rows: np.ndarray, settings: dict) -> np.ndarray:
    """The gate's lead input for corpus rows, read in blocks so that a large corpus never sits in memory."""
    leads, rate = list(corpus.attrs["leads"]), float(corpus.attrs["sampling_rate"])
    blocks = []
    for start in range(0, len(rows), READ_BLOCK):
        signals = corpus["signals"].oindex[rows[start : start + READ_BLOCK]]
        blocks.append(lead_features(signals, leads, list(settings["leads"]), rate, float(settings["sampling_rate"])))
    return np.concatenate(blocks)


def target_scale(data: TaskData) -> float:
    """Regression losses are measured in units of the training target's std, so one learning rate suits all."""
    if data.task.type != "regression":
        return 1.0
    return float(np.std(data.target[data.train])) or 1.0


def fit_task_gate(data: TaskData, backbones: list[str], settings: dict) -> tuple[Gate, list[float], float]:
    """The gate and its training losses, and the target scale its expert inputs were divided by."""
    oof, _ = expert_predictions(data, backbones)
    scale = target_scale(data)
    features = gate_input(gate_lead_features(data.corpus, data.train, settings), oof / scale, settings["use_expert_outputs"])
    gate, history = fit_gate(data.task, features, oof, data.target[data.train], data.subjects[data.train], settings, scale)
    return gate, history, scale


def save_gate(gate: Gate, directory: Path, backbones: list[str], settings: dict, scale: float, meta: dict) -> None:
    with atomic_path(directory) as tmp:
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in gate.state_dict().items()}, str(tmp / "gate.safetensors"))
        config = {"experts": backbones, "in_dim": gate.net[0].in_features, "hidden": gate.net[0].out_features, "settings": settings, "target_scale": scale}
        (tmp / "gate.json").write_text(json.dumps({**config, **meta}, indent=2, default=str))


def load_gate(directory: Path) -> tuple[Gate, dict]:
    config_path = Path(directory) / "gate.json"
    if not config_path.exists():
        raise StoreError(f"{config_path} does not exist; run `enecg fit-gate`")
    config = json.loads(config_path.read_text())
    gate = Gate(config["in_dim"], len(config["experts"]), config["hidden"])
    gate.load_state_dict(load_file(str(Path(directory) / "gate.safetensors")), strict=True)
    return gate.eval(), config


def moe_predict(gate: Gate, config: dict, leads: np.ndarray, experts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gate weights [B, E] and the ensemble prediction [B, K] from lead features and expert predictions [B, E, K]."""
    features = gate_input(leads, experts / config["target_scale"], config["settings"]["use_expert_outputs"])
    weights = gate_weights(gate, features)
    return weights, combine(torch.from_numpy(weights), torch.from_numpy(experts)).numpy()


def evaluate_task(data: TaskData, settings: dict) -> tuple[dict, list[dict]]:
    """Every expert alone, their plain mean, and the MoE ensemble on the test rows, with bootstrap CIs."""
    gate, config = load_gate(gate_dir(data.task.name))
    backbones, gate_settings = config["experts"], config["settings"]
    _, test = expert_predictions(data, backbones)
    weights, moe = moe_predict(gate, config, gate_lead_features(data.corpus, data.test, gate_settings), test)
    truth = data.target[data.test]
    candidates = {**{f"expert:{name}": test[:, e] for e, name in enumerate(backbones)}, "mean": test.mean(axis=1), "moe": moe}
    boot = dict(resamples=int(settings["bootstrap"]), confidence=float(settings["confidence"]), seed=int(settings["seed"]))
    report = {
        "task": data.task.name,
        "type": data.task.type,
        "n_train": int(len(data.train)),
        "n_test": int(len(data.test)),
        "models": {name: bootstrap_metrics(data.task, truth, prediction, **boot) for name, prediction in candidates.items()},
        "gate_weights_mean": dict(zip(backbones, weights.mean(axis=0).round(4).tolist())),
    }
    if data.task.type in ("multiclass", "multilabel"):
        report["per_label_auroc"] = per_label_auroc(data.task, truth, moe)
    report["provenance"] = provenance(gate=config.get("provenance"))
    return report, prediction_rows(data, truth, candidates["mean"], moe)


def prediction_rows(data: TaskData, truth: np.ndarray, mean: np.ndarray, moe: np.ndarray) -> list[dict]:
    """One row per test record for DVC plots: the target and the mean and MoE predictions, in readable form."""
    ids = strings(data.corpus["record_id"])[data.test]
    task = data.task
    if task.type in ("regression", "binary"):
        actual = float if task.type == "regression" else int
        return [{"record_id": i, "actual": actual(t), "mean": float(m[0]), "moe": float(e[0])} for i, t, m, e in zip(ids, truth, mean, moe)]
    if task.type == "multiclass":
        return [{"record_id": i, "actual": task.classes[t], "predicted": task.classes[int(e.argmax())]} for i, t, e in zip(ids, truth, moe)]
    join = lambda flags: ";".join(name for name, flag in zip(task.classes, flags) if flag)  # noqa: E731
    return [{"record_id": i, "actual": join(t >= 0.5), "predicted": join(e >= 0.5)} for i, t, e in zip(ids, truth, moe)]
