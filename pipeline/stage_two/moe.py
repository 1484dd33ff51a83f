"""Stage two, second half: the mixture-of-experts gate of one task, on predictions no expert trained on.

The gate trains on the stacking rows' predictions (TaskData.stacking_rows), each made by a model that never saw
that row: a fold head that left it out, or an expert trained without the gate hold-out. At
test time it sees the same kind of input: each fold model's test predictions are gated and mixed on their
own, and the k mixtures are averaged (gating the k-model mean instead would feed it less extreme
probabilities than it was trained on).

Artifacts, gates/TASK/: VARIANT.safetensors per gate variant ("moe", and the ablations asked for in
params: "moe:constant", "moe:outputs", "moe:leads", "moe:leads+outputs") and gate.json (experts in order,
settings, each variant's inputs and training curves, provenance) and rows.npy (the corpus rows it trained on).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import zarr
from safetensors.torch import load_file, save_file

from pipeline.errors import StoreError
from pipeline.stage_two.dataset import TaskData
from pipeline.stage_two.gate import (
    Gate,
    combine,
    expert_features,
    fit_gate,
    gate_weights,
    lead_signals,
)
from pipeline.stage_two.predictions import expert_predictions
from pipeline.stores import atomic_path

READ_BLOCK = 1024  # corpus rows read at a time for the gate's leads


def gate_lead_signals(corpus: zarr.Group, rows: np.ndarray, settings: dict) -> np.ndarray:
    """The gate's lead input [N, L, T] for corpus rows, read in blocks so that a large corpus never sits in memory."""
    leads, rate = list(corpus.attrs["leads"]), float(corpus.attrs["sampling_rate"])
    blocks = []
    for start in range(0, len(rows), READ_BLOCK):
        signals = corpus["signals"].oindex[rows[start : start + READ_BLOCK]]
        blocks.append(lead_signals(signals, leads, list(settings["leads"]), rate, float(settings["sampling_rate"])))
    return np.concatenate(blocks) if blocks else np.zeros((0, len(settings["leads"]), 0), np.float32)


def target_scale(data: TaskData) -> float:
    """Regression losses are measured in units of the training target's std, so one learning rate suits all."""
    if data.task.type != "regression":
        return 1.0
    return float(np.std(data.target[data.train])) or 1.0


def gate_variants(settings: dict) -> dict[str, list[str]]:
    """Variant name -> gate inputs: the configured gate ("moe") and the ablations asked for."""
    variants = {"moe": list(settings.get("inputs", ["leads", "outputs"]))}
    for ablation in settings.get("ablations", []):
        variants[f"moe:{ablation}"] = [] if ablation == "constant" else ablation.split("+")
    return variants


def fit_task_gates(data: TaskData, backbones: list[str], settings: dict) -> tuple[dict[str, Gate], dict]:
    """Every gate variant of the task, trained on the experts' predictions for the stacking rows; and the gate
    config (its "rows": the corpus rows it trained on)."""
    oof, _ = expert_predictions(data, backbones)
    scale = target_scale(data)
    rows = data.stacking_rows
    leads = gate_lead_signals(data.corpus, rows, settings)
    features = expert_features(data.task, oof, scale)
    gates, histories = {}, {}
    for name, inputs in gate_variants(settings).items():
        gates[name], histories[name] = fit_gate(data.task, leads, features, oof, data.target[rows], data.subjects[rows], settings, scale, inputs)
    config = {
        "experts": backbones, "rows": rows, "settings": settings, "target_scale": scale, "n_leads": leads.shape[1], "n_outputs": features.shape[1],
        "variants": {name: {"inputs": gate.inputs, "history": histories[name]} for name, gate in gates.items()},
    }
    return gates, config


def save_gates(gates: dict[str, Gate], config: dict, directory: Path, meta: dict) -> None:
    with atomic_path(directory) as tmp:
        tmp.mkdir(parents=True)
        for name, gate in gates.items():
            save_file({k: v.contiguous() for k, v in gate.state_dict().items()}, str(tmp / f"{name}.safetensors"))
        config = dict(config)
        np.save(tmp / "rows.npy", config.pop("rows"))
        (tmp / "gate.json").write_text(json.dumps({**config, **meta}, indent=2, default=str))


def load_gates(directory: Path) -> tuple[dict[str, Gate], dict]:
    config_path = Path(directory) / "gate.json"
    if not config_path.exists():
        raise StoreError(f"{config_path} does not exist; run `enecg fit-gate`")
    config = json.loads(config_path.read_text())
    settings, gates = config["settings"], {}
    for name, variant in config["variants"].items():
        gate = Gate(config["n_leads"], config["n_outputs"], len(config["experts"]), variant["inputs"], int(settings.get("channels", 16)), int(settings["hidden"]))
        gate.load_state_dict(load_file(str(Path(directory) / f"{name}.safetensors")), strict=True)
        gates[name] = gate.eval()
    return gates, config


def moe_predict(task, gate: Gate, config: dict, leads: np.ndarray, test_folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gate weights [B, E] and the ensemble prediction [B, K] from leads [B, L, T] and each fold model's expert
    predictions [k, B, E, K]: every fold's experts are gated and mixed on their own, then averaged."""
    weights, mixtures = [], []
    for experts in test_folds:
        w = gate_weights(gate, leads, expert_features(task, experts, config["target_scale"]))
        weights.append(w)
        mixtures.append(combine(task, torch.from_numpy(w), torch.from_numpy(np.ascontiguousarray(experts))).numpy())
    return np.mean(weights, axis=0), np.mean(mixtures, axis=0)
