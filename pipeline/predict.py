"""`predict`: the trained chain (backbones -> fold heads -> gate) on new WFDB records, without the corpus.

Each record goes through the same QC and resampling as `prepare`; an excluded record is reported with its
reason instead of a prediction. Each backbone is built once and shared by every task that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.backbones import LEADS_12, build_backbone
from pipeline.ensemble import load_expert_heads, load_gate, moe_predict
from pipeline.errors import RecordError
from pipeline.extract import backbone_inputs, embed_batches
from pipeline.gate import lead_features
from pipeline.heads import predict as head_predict
from pipeline.params import gate_dir, head_dir
from pipeline.signals import QCSettings, load_canonical
from pipeline.tasks import Task


@dataclass
class Prediction:
    record: str
    task: str
    value: np.ndarray | None  # the ensemble's prediction (value, or probabilities), None when excluded
    reason: str = ""


def predict_records(paths: list[Path], tasks: list[Task], settings: QCSettings, device: str = "cpu") -> list[Prediction]:
    loaded, excluded = {}, []
    for path in paths:
        try:
            loaded[str(path)] = load_canonical(path, settings)
        except RecordError as error:
            excluded += [Prediction(str(path), task.name, None, str(error)) for task in tasks]
    if not loaded:
        return excluded
    names, signals = list(loaded), np.stack(list(loaded.values()))
    leads = list(LEADS_12)
    embeddings: dict[str, np.ndarray] = {}
    results = []
    for task in tasks:
        gate, config = load_gate(gate_dir(task.name))
        experts = []
        for backbone in config["experts"]:
            if backbone not in embeddings:
                model = build_backbone(backbone).to(device)
                inputs = backbone_inputs(signals, settings.sampling_rate, leads, model)
                embeddings[backbone] = embed_batches(model, inputs, 32, torch.device(device))["embedding"]
            heads = load_expert_heads(head_dir(task.name, backbone))
            experts.append(np.mean([head_predict(task, head, embeddings[backbone]) for head in heads], axis=0))
        gate_leads = lead_features(signals, leads, list(config["settings"]["leads"]), settings.sampling_rate, float(config["settings"]["sampling_rate"]))
        _, moe = moe_predict(gate, config, gate_leads, np.stack(experts, axis=1))
        results += [Prediction(name, task.name, value) for name, value in zip(names, moe)]
    return results + excluded
