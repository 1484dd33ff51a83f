"""The mixture-of-experts gate: softmax weights over the experts from a raw lead subset and the experts' outputs.

    weights = softmax(mlp([encoder(leads), standardised expert outputs]))      prediction = sum_e weights_e * expert_e

- The lead encoder is small and shift-invariant: 1-D convolutions over the configured leads at the gate's
  rate (default lead II at 50 Hz, as EnECG), then global mean and max pooling, so a beat means the same
  wherever it falls in the record. Each record's baseline is removed but its amplitude kept (in units of
  the training rows' signal std): amplitude is part of what tells records apart.
- The experts' outputs (logits for classification, values in target-std units for regression) may be
  inputs too; `inputs` chooses [leads], [outputs], both, or none (a learned constant weighting).
- The output layer starts at zero, so the gate starts as the plain mean, and early stopping scores that start
  in the task's primary metric (macro AUROC, or MAE; training.held_out_score), as the heads' does: the
  mixture's likelihood can keep improving while its ranking, what is reported, gets worse.

The ensemble prediction is the weighted sum of the experts' raw outputs (values for regression, logits otherwise;
see `combine`). The gate is trained on predictions no expert trained on (out-of-fold).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.ecg import resample
from pipeline.seeding import seeded
from pipeline.stage_two.losses import prediction_loss
from pipeline.stage_two.training import fit, held_out_score, validation_split
from pipeline.tasks import Task


def lead_signals(signals: np.ndarray, corpus_leads: list[str], leads: list[str], corpus_rate: float, rate: float) -> np.ndarray:
    """[B, 12, L] corpus signals -> [B, len(leads), T] the gate's leads at its rate, baseline (mean) removed."""
    chosen = resample(signals[:, [corpus_leads.index(lead) for lead in leads]], corpus_rate, rate)
    return (chosen - chosen.mean(axis=-1, keepdims=True)).astype(np.float32)


def expert_features(task: Task, experts: np.ndarray, scale: float) -> np.ndarray:
    """[B, E, K] expert predictions -> [B, E * K] gate inputs: logits (classification) or value / scale."""
    if task.type == "regression":
        values = experts / scale
    else:
        p = np.clip(experts, 1e-4, 1 - 1e-4)
        values = np.log(p / (1 - p))
    return values.reshape(len(experts), -1).astype(np.float32)


class LeadEncoder(nn.Module):
    """[B, leads, T] -> [B, 2 * channels]: strided and dilated convolutions, then global mean and max pooling."""

    def __init__(self, n_leads: int, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(n_leads, channels, 7, stride=2, padding=3), nn.ReLU(),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv1d(channels, channels, 5, padding=4, dilation=2), nn.ReLU(),
        )

    def forward(self, leads: torch.Tensor) -> torch.Tensor:
        h = self.net(leads)
        return torch.cat([h.mean(-1), h.amax(-1)], dim=1)


class Gate(nn.Module):
    def __init__(self, n_leads: int, n_outputs: int, n_experts: int, inputs: list[str], channels: int = 16, hidden: int = 64):
        super().__init__()
        self.inputs = list(inputs)
        self.register_buffer("lead_scale", torch.ones(1))
        self.register_buffer("out_mean", torch.zeros(n_outputs))
        self.register_buffer("out_std", torch.ones(n_outputs))
        self.encoder = LeadEncoder(n_leads, channels) if "leads" in self.inputs else None
        features = (2 * channels if self.encoder else 0) + (n_outputs if "outputs" in self.inputs else 0)
        if features:
            self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, n_experts))
            last = self.net[2]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        else:
            self.constant = nn.Parameter(torch.zeros(n_experts))

    def forward(self, leads: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """Softmax weights [B, n_experts] from leads [B, L, T] and expert features [B, E * K]."""
        parts = []
        if self.encoder is not None:
            parts.append(self.encoder(leads / self.lead_scale))
        if "outputs" in self.inputs:
            parts.append((outputs - self.out_mean) / self.out_std)
        if not parts:
            return torch.softmax(self.constant, dim=-1).expand(len(leads), -1)
        return torch.softmax(self.net(torch.cat(parts, dim=1)), dim=-1)


def combine(task: Task, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """The ensemble's prediction from weights [B, E] and the experts' predictions [B, E, K] (values, or
    probabilities): the weighted sum of the experts' raw outputs (values, or logits: log-probabilities for
    multiclass, whose softmax is the same), as EnECG's gate sums its heads' raw outputs; returned as a prediction.

    Not a sum of probabilities: on a label with few positives a strong expert's probabilities for the negatives
    are ~1e-3 and a weak expert's ~1e-2, so even a 1% weight on the weak one reorders the records (PTB-XL subclass:
    the MoE 0.005 macro AUROC below its strong expert at a mean weight of 0.988); in logits a weak expert's nearly
    constant output moves every record alike.
    """
    if task.type == "regression":
        return torch.einsum("be,bek->bk", weights, experts)
    # only 0 and 1 are moved (to the nearest representable values), to keep logits finite: a wider clamp would tie the
    # records a confident expert ranks below it (PTB-XL scp_all: many probabilities under 1e-7)
    p = experts.clamp(torch.finfo(experts.dtype).tiny, 1 - torch.finfo(experts.dtype).eps / 2)
    if task.type == "multiclass":
        return torch.softmax(torch.einsum("be,bek->bk", weights, p.log()), dim=-1)
    return torch.sigmoid(torch.einsum("be,bek->bk", weights, p.log() - (-p).log1p()))


def plain_mean(task: Task, experts: np.ndarray) -> np.ndarray:
    """The experts mixed with equal weights ([B, E, K] -> [B, K]): what every gate starts as."""
    tensor = torch.from_numpy(np.ascontiguousarray(experts))
    return combine(task, torch.full(experts.shape[:2], 1.0 / experts.shape[1], dtype=tensor.dtype), tensor).numpy()


def fit_gate(
    task: Task, leads: np.ndarray, features: np.ndarray, experts: np.ndarray, target: np.ndarray, subjects: np.ndarray,
    settings: dict, scale: float, inputs: list[str],
) -> tuple[Gate, dict[str, list[float]]]:
    """Train the gate so that the weighted sum of the experts' out-of-fold predictions fits the target."""
    seed = int(settings["seed"])
    with seeded(seed):
        gate = Gate(leads.shape[1], features.shape[1], experts.shape[1], inputs, int(settings.get("channels", 16)), int(settings["hidden"]))
        lead_tensor, feature_tensor = torch.from_numpy(leads), torch.from_numpy(features)
        split = validation_split(subjects, float(settings.get("val_fraction", 0.0)), seed)
        gate.lead_scale.fill_(float(lead_tensor[split[0]].std()) or 1.0)
        gate.out_mean.copy_(feature_tensor[split[0]].mean(0))
        gate.out_std.copy_(feature_tensor[split[0]].std(0).clamp_min(1e-3) if len(split[0]) > 1 else torch.ones(features.shape[1]))
        expert_tensor = torch.from_numpy(experts.astype(np.float32))
        mixture = lambda g, rows: combine(task, g(lead_tensor[rows], feature_tensor[rows]), expert_tensor[rows]).numpy()  # noqa: E731
        history = fit(
            gate,
            (lead_tensor, feature_tensor, expert_tensor, torch.from_numpy(target)),
            lambda g, lb, fb, eb, yb: prediction_loss(task, combine(task, g(lb, fb), eb), yb, scale),
            settings,
            seed,
            split,
            score=held_out_score(task, target, split[1], mixture),
        )
    return gate, history


@torch.inference_mode()
def gate_weights(gate: Gate, leads: np.ndarray, features: np.ndarray) -> np.ndarray:
    gate.eval()
    return gate(torch.from_numpy(leads), torch.from_numpy(features)).numpy()
