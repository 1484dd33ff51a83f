"""The one minibatch training loop that heads, the gate and the forecasting pretraining share."""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (layer initialisation, dropout) and ask for deterministic kernels."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def fit(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    loss: Callable[..., torch.Tensor],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
) -> list[float]:
    """Train the model's trainable parameters with AdamW; `loss(model, *batch)` sees one minibatch.

    Returns the mean training loss of each epoch. The batch order comes from a generator seeded with `seed`,
    so the same data, model initialisation and seed give the same weights on the CPU.
    """
    generator = torch.Generator().manual_seed(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    count = len(inputs[0])
    history = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(count, generator=generator)
        total = 0.0
        for start in range(0, count, batch_size):
            batch = order[start : start + batch_size]
            value = loss(model, *(tensor[batch] for tensor in inputs))
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            total += float(value.detach()) * len(batch)
        history.append(total / count)
    model.eval()
    return history
