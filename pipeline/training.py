"""The one minibatch training loop that heads and the gate share, with subject-wise early stopping."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.model_selection import GroupShuffleSplit


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (layer initialisation, dropout) and ask for deterministic kernels."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def validation_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions with no subject on both sides; no validation when there are too few subjects."""
    positions = np.arange(len(groups))
    if fraction <= 0 or len(set(groups)) < 4:
        return positions, positions[:0]
    train, validation = next(GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed).split(positions, groups=groups))
    return np.sort(train), np.sort(validation)


def fit(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    loss: Callable[..., torch.Tensor],
    settings: dict,
    seed: int,
    groups: np.ndarray,
) -> list[float]:
    """Train the model's trainable parameters with AdamW; `loss(model, *batch)` sees one minibatch.

    `settings` gives epochs, lr, batch_size, weight_decay, and `val_fraction`/`patience`: that fraction of
    the subjects (`groups`) is held out, and training stops when its loss has not improved for `patience`
    epochs; the best epoch's weights are kept. Returns the training loss of each epoch. The batch order
    comes from a generator seeded with `seed`, so the same data and seed give the same weights on the CPU.
    """
    train, validation = validation_split(groups, float(settings.get("val_fraction", 0.0)), seed)
    generator = torch.Generator().manual_seed(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=float(settings["lr"]), weight_decay=float(settings.get("weight_decay", 0.0)))
    batch_size, patience = int(settings["batch_size"]), int(settings.get("patience", 10))
    held_out = [tensor[validation] for tensor in inputs]
    best, best_state, waited, history = float("inf"), None, 0, []
    for _ in range(int(settings["epochs"])):
        model.train()
        order = torch.from_numpy(train)[torch.randperm(len(train), generator=generator)]
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            value = loss(model, *(tensor[batch] for tensor in inputs))
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            total += float(value.detach()) * len(batch)
        history.append(total / len(order))
        if len(validation):
            model.eval()
            with torch.no_grad():
                current = float(loss(model, *held_out))
            if current < best - 1e-6:
                best, waited = current, 0
                best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
            else:
                waited += 1
                if waited >= patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
