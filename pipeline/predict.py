"""`predict`: the trained chain (backbones -> fold heads -> gate) on new WFDB records, without the corpus.

Each record goes through the same QC and resampling as `prepare`; an excluded record is reported with its
reason instead of a prediction. Each backbone is built once and shared by every task that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.ecg import LEADS_12
from pipeline.errors import RecordError
from pipeline.layout import gate_dir, head_dir
from pipeline.stage_one.backbones import build_backbone
from pipeline.stage_one.extract import backbone_inputs, embed_batches, resolve_device
from pipeline.stage_one.signals import QCSettings, load_canonical
from pipeline.stage_two.experts import load_expert_heads
from pipeline.stage_two.gate import lead_signals
from pipeline.stage_two.heads import predict as head_predict
from pipeline.stage_two.moe import load_gates, moe_predict
from pipeline.tasks import Task


@dataclass
class Prediction:
    record: str
    task: str
    value: np.ndarray | None  # the ensemble's prediction (value, or probabilities), None when excluded
    reason: str = ""


def predict_records(paths: list[Path], tasks: list[Task], settings: QCSettings, device: str = "auto", batch_size: int = 32) -> list[Prediction]:
    """The ensemble's prediction of every task for every readable record; `device` as params `extract.device`."""
    torch_device = resolve_device(device)
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
        gates, config = load_gates(gate_dir(task.name))
        experts = []
        for backbone in config["experts"]:
            if backbone not in embeddings:
                model = build_backbone(backbone).to(torch_device)
                inputs = backbone_inputs(signals, settings.sampling_rate, leads, model)
                embeddings[backbone] = embed_batches(model, inputs, batch_size, torch_device)["embedding"]
            heads = load_expert_heads(head_dir(task.name, backbone))
            experts.append(np.stack([head_predict(task, head, embeddings[backbone]) for head in heads]))
        gate_leads = lead_signals(signals, leads, list(config["settings"]["leads"]), settings.sampling_rate, float(config["settings"]["sampling_rate"]))
        _, moe = moe_predict(task, gates["moe"], config, gate_leads, np.stack(experts, axis=2))
        results += [Prediction(name, task.name, value) for name, value in zip(names, moe)]
    return results + excluded
