"""The expert heads: a linear probe plus EnECG's LoRA-adapted FFN as a correction, on one backbone's embedding.

    output(x) = probe(z) + ffn_lora(z) + bias,   z = (x - mean) / std   (training rows' statistics)

- `probe` is fitted in closed form first (pipeline.stage_two.probe: ridge, penalty by leave-one-out; Platt-scaled to
  logits for classification) on the rows the head trains on, and then frozen: preview linear probing, after
  the ECGFounder post-training study.
- `ffn` is EnECG's Linear-ReLU-Linear-ReLU-Linear (hidden 256). As in EnECG its base weights stay at their
  seeded random initialisation and only LoRA adapters (peft) on its Linear layers train. Unlike EnECG the
  base of the last layer is zero, so the correction starts at exactly zero and the head starts exactly at
  its probe; `bias` is a trainable per-label intercept (LoRA has none).
- Early stopping scores the start (see pipeline.stage_two.training.fit) on subjects neither the probe nor the FFN
  trained on, in the task's primary metric (macro AUROC, or MAE; training.held_out_score), so a head ends no worse than
  its probe on held-out subjects in the metric that is reported; then each label whose correction does not beat
  its probe on those subjects goes back to the probe (`keep_probe_where_no_better`).
- Training computes the frozen parts once (`frozen_parts`): the standardised embedding, the probe's output and the
  first FFN layer's base output never change, and on a 9,996-wide MiniRocket embedding they are ~97% of a
  step's arithmetic. Only the LoRA branch of that layer still sees the full embedding (`cached_forward`).

A head is saved as its base (scalers, probe, frozen FFN, bias; safetensors) plus its adapter (peft's format).
A regression target is learnt standardised (its mean and std are buffers), so one learning rate suits all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.seeding import seeded
from pipeline.stage_two.losses import head_loss, standardisation, to_prediction
from pipeline.stage_two.metrics import roc_auc
from pipeline.stage_two.probe import fit_probe
from pipeline.stage_two.training import fit, held_out_score, validation_split
from pipeline.tasks import Task


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
        self.probe = nn.Linear(in_dim, out_dim)
        self.ffn = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
        )
        nn.init.zeros_(self.ffn[4].weight)
        nn.init.zeros_(self.ffn[4].bias)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs: logits, or the standardised value for regression."""
        z = (x - self.x_mean) / self.x_std
        return self.probe(z) + self.ffn(z) + self.bias


def _lora_config(settings: dict) -> LoraConfig:
    lora = settings["lora"]
    return LoraConfig(
        r=int(lora["r"]),
        lora_alpha=int(lora["alpha"]),
        lora_dropout=float(lora["dropout"]),
        # a regex, not a list: peft saves a list as a set, in an order that changes from process to process,
        # and DVC would then see a changed head on every rerun
        target_modules=rf"ffn\.({'|'.join(str(index) for index in sorted(lora['target_layers']))})",
        bias="none",
    )


@dataclass
class FittedHead:
    model: PeftModel
    probe: Head  # the head as it started: probe only, correction zero
    history: dict[str, list[float]]


def fit_head(task: Task, embeddings: np.ndarray, target: np.ndarray, subjects: np.ndarray, settings: dict, seed: int) -> FittedHead:
    """A fresh head (seeded base) started at its probe, then LoRA-trained (early-stopped on held-out subjects).

    The probe and the FFN train on the same rows; a `val_fraction` of the subjects is held out of both, for
    early stopping only.
    """
    with seeded(seed):
        head = Head(embeddings.shape[1], task.out_dim, int(settings["hidden"]))
        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        train, validation = validation_split(subjects, float(settings.get("val_fraction", 0.0)), seed)
        head.x_mean.copy_(x[train].mean(0))
        head.x_std.copy_(robust_std(x[train]))
        y = torch.from_numpy(np.asarray(target))
        if task.type == "regression":
            mean, std = standardisation(y[train])
            head.y_mean.fill_(mean)
            head.y_std.fill_(std)
            y = (y - head.y_mean[0]) / head.y_std[0]
        with torch.no_grad():
            if settings.get("probe", True):
                weight, bias = fit_probe(task, ((x[train] - head.x_mean) / head.x_std).numpy(), y[train].numpy())
            else:  # no probe: the head starts at the training prior (mean value, base rate), as a constant
                weight, bias = np.zeros((task.out_dim, x.shape[1])), _prior(task, y[train].numpy())
            head.probe.weight.copy_(torch.from_numpy(weight))
            head.probe.bias.copy_(torch.from_numpy(bias))
        head.requires_grad_(False)
        probe = _copy(head)
        model = get_peft_model(head, _lora_config(settings))
        model.get_base_model().bias.requires_grad_(True)
        inputs = (*frozen_parts(model, x), y)
        history = fit(model, inputs, lambda m, *batch: head_loss(task, cached_forward(m, *batch[:-1]), batch[-1]), settings, seed,
                      (train, validation), score=held_out_score(task, y.numpy(), validation, _predictor(task, inputs)))
        if task.type in ("binary", "multilabel") and len(validation):
            history["probe_labels"] = keep_probe_where_no_better(model, inputs, validation)
    return FittedHead(model, probe, history)


MIN_HELD_OUT_CASES = 10  # positives and negatives a label needs among the held-out rows to show its correction helps


@torch.no_grad()
def keep_probe_where_no_better(model: PeftModel, inputs: tuple[torch.Tensor, ...], validation: np.ndarray) -> list[int]:
    """Put back to its probe, exactly, every label whose trained correction does not raise its own held-out AUROC
    above the probe's, or cannot show it (fewer than MIN_HELD_OUT_CASES positives or negatives held out); returns
    those labels.

    Early stopping follows the macro AUROC, so a rare label the held-out rows barely score can end far below its
    probe while the average rises (PTB-XL subclass, MiniRocket: one label at test AUROC 0.15-0.28 where its probe
    was the prior, 0.5). An AUROC from one or two held-out positives says nothing either (PTB-XL form: a label with
    1 held-out positive kept a correction that took it from 0.72 to 0.46 on the test records). A label goes back by
    zeroing its intercept and its row of the output layer's LoRA update; the output layer's base is zero, so its
    correction is then zero.
    """
    head = model.get_base_model()
    truth = inputs[-1][validation].numpy().reshape(len(validation), -1)
    probe_scores = inputs[1][validation].numpy()
    head_scores = cached_forward(model, *(t[validation] for t in inputs[:-1])).numpy()
    reverted = []
    for label in range(truth.shape[1]):
        positives = truth[:, label].sum()
        scorable = min(positives, len(truth) - positives) >= MIN_HELD_OUT_CASES
        if not scorable or roc_auc(head_scores[:, label], truth[:, label]) <= roc_auc(probe_scores[:, label], truth[:, label]):
            reverted.append(label)
    last = head.ffn[4]
    if isinstance(last, LoraLayer):
        for name in last.active_adapters:
            last.lora_B[name].weight[reverted] = 0.0
    head.bias[reverted] = 0.0
    return reverted


def _predictor(task: Task, inputs: tuple[torch.Tensor, ...]):
    """predict(model, rows) from the cached frozen parts (a standardised value for regression: MAE in target stds)."""
    return lambda model, rows: to_prediction(task, cached_forward(model, *(t[rows] for t in inputs[:-1]))).numpy()


@torch.no_grad()
def frozen_parts(model: PeftModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, probe(z), the first FFN layer's base output) for raw embeddings x: what training never changes."""
    head = model.get_base_model()
    z = (x - head.x_mean) / head.x_std
    first = head.ffn[0]
    base = first.get_base_layer() if isinstance(first, LoraLayer) else first
    return z, head.probe(z), base(z)


def cached_forward(model: PeftModel, z: torch.Tensor, probe_out: torch.Tensor, first_base: torch.Tensor) -> torch.Tensor:
    """The head's raw output from its `frozen_parts`, equal to `model(x)` (a test checks it).

    peft offers no way to reuse a frozen base layer's output, so the first layer's LoRA branch is applied here
    from peft's own modules (its dropout, A, B and scaling); the later layers run through peft as usual.
    """
    head = model.get_base_model()
    first, hidden = head.ffn[0], first_base
    if isinstance(first, LoraLayer):
        for name in first.active_adapters:
            hidden = hidden + first.lora_B[name](first.lora_A[name](first.lora_dropout[name](z))) * first.scaling[name]
    return probe_out + head.ffn[1:](hidden) + head.bias


def _prior(task: Task, y: np.ndarray) -> np.ndarray:
    if task.type == "regression":
        return np.zeros(1)
    if task.type == "multiclass":
        counts = np.bincount(y, minlength=task.out_dim) + 0.5
        return np.log(counts / counts.sum())
    rate = (y.reshape(len(y), -1).mean(0) * len(y) + 0.5) / (len(y) + 1)
    return np.log(rate / (1 - rate))


def _copy(head: Head) -> Head:
    shape = head.probe.weight.shape
    copy = Head(shape[1], shape[0], head.ffn[0].out_features)
    copy.load_state_dict(head.state_dict())
    return copy.eval()


@torch.inference_mode()
def predict(task: Task, model: nn.Module, embeddings: np.ndarray) -> np.ndarray:
    """Predictions in the ensemble's space (value, or probabilities) for [N, D] embeddings."""
    model.eval()
    head = model.get_base_model() if isinstance(model, PeftModel) else model
    raw = model(torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)))
    if task.type == "regression":
        raw = raw * head.y_std + head.y_mean
    return to_prediction(task, raw).numpy()


def save_head(model: PeftModel, directory: Path) -> None:
    """Base weights (scalers, probe, frozen FFN, trained bias) + the LoRA adapter (peft's own format)."""
    directory.mkdir(parents=True, exist_ok=True)
    head = model.get_base_model()
    shape = {"in_dim": head.probe.in_features, "out_dim": head.probe.out_features, "hidden": head.ffn[0].out_features}
    (directory / "head.json").write_text(json.dumps(shape))
    save_file({k: v.contiguous() for k, v in base_state(model).items()}, str(directory / "base.safetensors"))
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
