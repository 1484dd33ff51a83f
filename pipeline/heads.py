"""EnECG's expert heads: a FFN on one backbone's cached embedding, adapted with LoRA (peft).

The head is EnECG's Linear-ReLU-Linear-ReLU-Linear (hidden 256). As in EnECG the FFN's own weights stay at
their random initialisation and only LoRA adapters on its Linear layers are trained, so a head is its base
weights plus its adapter: both are saved (the adapter alone cannot be put back on another random base).
The embedding is standardised with the training rows' mean and std (buffers of the base), and a regression
target is learnt standardised (its mean and std are buffers too), so one learning rate suits every backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.tasks import Task, head_loss, to_prediction
from pipeline.training import fit, seed_everything


def robust_std(x: torch.Tensor) -> torch.Tensor:
    """Per-feature std, floored at 5% of the median feature's std.

    Some features are nearly constant on the training rows (e.g. MiniRocket PPVs at 0 or 1); dividing by
    their tiny std would blow up any test record where they move.
    """
    std = x.std(0)
    return std.clamp_min(max(1e-6, 0.05 * float(std.median())))


class Head(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256):
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(in_dim))
        self.register_buffer("x_std", torch.ones(in_dim))
        self.register_buffer("y_mean", torch.zeros(out_dim))
        self.register_buffer("y_std", torch.ones(out_dim))
        self.ffn = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs: logits, or the standardised value for regression."""
        return self.ffn((x - self.x_mean) / self.x_std)


def _lora_config(settings: dict) -> LoraConfig:
    lora = settings["lora"]
    return LoraConfig(
        r=int(lora["r"]),
        lora_alpha=int(lora["alpha"]),
        lora_dropout=float(lora["dropout"]),
        target_modules=[f"ffn.{index}" for index in lora["target_layers"]],
        bias="none",
    )


def fit_head(task: Task, embeddings: np.ndarray, target: np.ndarray, subjects: np.ndarray, settings: dict, seed: int) -> tuple[PeftModel, list[float]]:
    """A fresh head (seeded base) with a LoRA adapter, trained on these rows (early-stopped on held-out subjects)."""
    seed_everything(seed)
    head = Head(embeddings.shape[1], task.out_dim, int(settings["hidden"]))
    x = torch.from_numpy(embeddings.astype(np.float32))
    head.x_mean.copy_(x.mean(0))
    head.x_std.copy_(robust_std(x))
    y = torch.from_numpy(target)
    if task.type == "regression":
        head.y_mean.fill_(float(y.mean()))
        head.y_std.fill_(float(y.std().clamp_min(1e-6)))
        y = (y - head.y_mean[0]) / head.y_std[0]
    model = get_peft_model(head, _lora_config(settings))
    history = fit(model, (x, y), lambda m, xb, yb: head_loss(task, m(xb), yb), settings, seed, subjects)
    return model, history


@torch.inference_mode()
def predict(task: Task, model: nn.Module, embeddings: np.ndarray) -> np.ndarray:
    """Predictions in the ensemble's space (value, or probabilities) for [N, D] embeddings."""
    model.eval()
    head = model.get_base_model() if isinstance(model, PeftModel) else model
    raw = model(torch.from_numpy(embeddings.astype(np.float32)))
    if task.type == "regression":
        raw = raw * head.y_std + head.y_mean
    return to_prediction(task, raw).numpy()


def save_head(model: PeftModel, base_state: dict[str, torch.Tensor], directory: Path) -> None:
    """Base weights (as initialised, with the scalers) + the LoRA adapter (peft's own format)."""
    directory.mkdir(parents=True, exist_ok=True)
    head = model.get_base_model()
    shape = {"in_dim": head.ffn[0].in_features, "out_dim": head.ffn[4].out_features, "hidden": head.ffn[0].out_features}
    (directory / "head.json").write_text(json.dumps(shape))
    save_file({k: v.contiguous() for k, v in base_state.items()}, str(directory / "base.safetensors"))
    model.save_pretrained(str(directory / "adapter"))


def base_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The head's base weights and buffers without the LoRA parameters, under the plain Head's key names."""
    state = {}
    for key, value in model.get_base_model().state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach().clone()
    return state


def load_head(directory: Path) -> PeftModel:
    shape = json.loads((directory / "head.json").read_text())
    head = Head(shape["in_dim"], shape["out_dim"], shape["hidden"])
    head.load_state_dict(load_file(str(directory / "base.safetensors")), strict=True)
    model = PeftModel.from_pretrained(head, str(directory / "adapter"))
    model.eval()
    return model
