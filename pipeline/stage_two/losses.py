"""Training losses and output spaces of the four task types (see pipeline.tasks)."""

from __future__ import annotations

import torch

from pipeline.tasks import Task


def standardisation(y: torch.Tensor) -> tuple[float, float]:
    """(mean, std) of the training rows' regression target, which heads and post-trained networks learn
    standardised; the std floored at 1e-6, and 1 for a single row."""
    return float(y.mean()), (float(y.std().clamp_min(1e-6)) if len(y) > 1 else 1.0)


def head_loss(task: Task, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Training loss on a head's raw outputs (logits, or the standardised value for regression)."""
    if task.type == "regression":
        return torch.nn.functional.mse_loss(outputs[:, 0], target)
    if task.type == "binary":
        return torch.nn.functional.binary_cross_entropy_with_logits(outputs[:, 0], target)
    if task.type == "multiclass":
        return torch.nn.functional.cross_entropy(outputs, target)
    return torch.nn.functional.binary_cross_entropy_with_logits(outputs, target)


def to_prediction(task: Task, outputs: torch.Tensor) -> torch.Tensor:
    """Raw head outputs -> the prediction space in which experts are averaged (see module docstring)."""
    if task.type == "regression":
        return outputs
    if task.type == "multiclass":
        return torch.softmax(outputs, dim=-1)
    return torch.sigmoid(outputs)


def prediction_loss(task: Task, prediction: torch.Tensor, target: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Loss of an (ensembled) prediction: MSE in units of `scale` for regression, negative log-likelihood otherwise."""
    eps = 1e-7
    if task.type == "regression":
        return torch.mean(((prediction[:, 0] - target) / scale) ** 2)
    if task.type == "multiclass":
        return torch.nn.functional.nll_loss(torch.log(prediction.clamp_min(eps)), target)
    probability = prediction.clamp(eps, 1 - eps)
    target = target.reshape(probability.shape)
    return -torch.mean(target * torch.log(probability) + (1 - target) * torch.log(1 - probability))
