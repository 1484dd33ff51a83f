"""EnECG's mixture-of-experts gate: softmax weights over the experts from a subset of the raw leads.

The gate sees the chosen leads (default lead II, as EnECG), resampled to a low rate and z-scored per
record, optionally with the experts' own predictions appended; an MLP turns that into one weight per expert.
The ensemble prediction is the weighted sum of the experts' predictions (values for regression,
probabilities otherwise). It is trained on the heads' out-of-fold predictions, so it never sees a head's
fit to its own training rows. Unlike EnECG's end-to-end LoRA gate, the gate is small and trained whole.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.heads import robust_std
from pipeline.signals import resample
from pipeline.tasks import Task, prediction_loss
from pipeline.training import fit, seed_everything


def lead_features(signals: np.ndarray, corpus_leads: list[str], leads: list[str], corpus_rate: float, rate: float) -> np.ndarray:
    """[B, 12, L] corpus signals -> [B, len(leads) * T'] z-scored, downsampled gate input."""
    chosen = resample(signals[:, [corpus_leads.index(lead) for lead in leads]], corpus_rate, rate)
    mean = chosen.mean(axis=-1, keepdims=True)
    std = chosen.std(axis=-1, keepdims=True) + 1e-6
    return ((chosen - mean) / std).reshape(len(signals), -1).astype(np.float32)


class Gate(nn.Module):
    def __init__(self, in_dim: int, n_experts: int, hidden: int = 256):
        super().__init__()
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_experts))
        # Start as the plain mean (uniform weights): early stopping then moves away from it only as far as
        # held-out subjects confirm.
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax weights [B, n_experts]."""
        return torch.softmax(self.net((features - self.in_mean) / self.in_std), dim=-1)


def gate_input(leads: np.ndarray, experts: np.ndarray, use_expert_outputs: bool) -> np.ndarray:
    """Lead features, with the experts' predictions [B, E, K] flattened onto them when asked."""
    if not use_expert_outputs:
        return leads
    return np.concatenate([leads, experts.reshape(len(experts), -1)], axis=1).astype(np.float32)


def combine(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Weighted sum over experts: [B, E] x [B, E, K] -> [B, K]."""
    return torch.einsum("be,bek->bk", weights, experts)


def fit_gate(task: Task, features: np.ndarray, experts: np.ndarray, target: np.ndarray, subjects: np.ndarray, settings: dict, scale: float) -> tuple[Gate, list[float]]:
    """Train the gate so that the weighted sum of the experts' out-of-fold predictions fits the target."""
    seed = int(settings["seed"])
    seed_everything(seed)
    x = torch.from_numpy(features)
    gate = Gate(x.shape[1], experts.shape[1], int(settings["hidden"]))
    gate.in_mean.copy_(x.mean(0))
    gate.in_std.copy_(robust_std(x))
    history = fit(
        gate,
        (x, torch.from_numpy(experts.astype(np.float32)), torch.from_numpy(target)),
        lambda g, xb, eb, yb: prediction_loss(task, combine(g(xb), eb), yb, scale),
        settings,
        seed,
        subjects,
    )
    return gate, history


@torch.inference_mode()
def gate_weights(gate: Gate, features: np.ndarray) -> np.ndarray:
    gate.eval()
    return gate(torch.from_numpy(features)).numpy()
