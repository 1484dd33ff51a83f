"""The one minibatch training loop that heads, the gate and post-training share, with subject-wise early stopping."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from pipeline.splits import hold_out_subjects
from pipeline.stage_two.metrics import fixed_labels, primary_metric, primary_value
from pipeline.tasks import Task


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block.

    Heads and gates are small models on minibatches of 32: a second thread only adds synchronisation, and
    on a 2-core machine that is busy with anything else every op then waits for it (a gate measured 10 s on
    one thread, 72 s on two). The same holds for post-training's Net1D on the CPU (a minibatch step of the
    CPU size measured 0.55 s on one thread and 8.8 s on two, on this 2-core machine shared with other work).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def validation_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions with no subject on both sides; no validation when there are fewer than 4 subjects."""
    positions = np.arange(len(groups))
    if len(set(groups)) < 4:
        return positions, positions[:0]
    return hold_out_subjects(positions, np.asarray(groups), fraction, seed)


def held_out_score(task: Task, target: np.ndarray, validation: np.ndarray, predict: Callable[[torch.nn.Module, np.ndarray], np.ndarray]):
    """`fit`'s `score` for a model of `task`: its primary metric on the held-out rows (minus macro AUROC, or MAE),
    from `predict(model, rows)` (predictions in the ensemble's space) against `target[rows]`.

    The metric the benchmark reports, not the loss: on PTB-XL's `form` statements (18 labels, few positives)
    a head's held-out BCE kept improving while its macro AUROC fell below its probe's (test AUROC 0.799 vs
    0.822). The label set is fixed once, on the held-out rows. No held-out rows, or no label of both values
    there (no AUROC): None, and the held-out loss decides.
    """
    if not len(validation):
        return None
    _, higher_is_better = primary_metric(task)
    truth = np.asarray(target)[validation]
    labels = fixed_labels(task, truth)
    if task.type != "regression" and not len(labels):
        return None

    def score(model: torch.nn.Module, rows: np.ndarray) -> float:
        value = primary_value(task, truth, predict(model, rows), labels)
        return -value if higher_is_better else value

    return score


# An epoch improves on the best when it is better by more than this fraction of the best value (torch's
# ReduceLROnPlateau's default relative threshold): on the demo's rr_interval gate the held-out MAE fell from 50.33
# to 50.32 ms over the 120 epochs after its 10th, each by under 1e-4 of itself, and every such step reset patience.
MIN_IMPROVEMENT = 1e-4


@one_thread()
def fit(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    loss: Callable[..., torch.Tensor],
    settings: dict,
    seed: int,
    split: tuple[np.ndarray, np.ndarray],
    lr_schedule: Callable[[int], float] | None = None,
    device: torch.device | None = None,
    eval_batch_size: int | None = None,
    on_step: Callable[[], None] | None = None,
    score: Callable[[torch.nn.Module, np.ndarray], float] | None = None,
) -> dict[str, list[float]]:
    """Train the model's trainable parameters with AdamW; `loss(model, *batch)` sees one minibatch.

    `split` is (train, validation) positions (see `validation_split`). `settings` gives epochs, lr,
    batch_size, weight_decay and patience: training stops when the held-out loss has not improved for
    `patience` epochs (an improvement counts when it exceeds MIN_IMPROVEMENT of the best value), and the best
    weights are kept. The starting point is scored too (epoch 0), so a model
    that starts from something good (a probe, the plain mean) never ends worse than it on held-out subjects.
    Returns {"train": [...], "validation": [...]} losses per epoch (validation[0] is the start). The batch
    order comes from a generator seeded with `seed`, so the same data and seed give the same weights on the CPU.

    `score(model, validation)` (lower is better), when given, is what early stopping and the kept weights follow
    instead of the held-out loss, e.g. minus the held-out AUROC: a loss can keep falling while the ranking that
    is reported gets worse. Its values per epoch are returned as history["score"].

    For a large model (post-training a CNN): `lr_schedule(step)` multiplies the learning rate at every
    optimiser step (e.g. warm-up then cosine); `device` is where the model lives, each minibatch is moved
    there from the CPU tensors (on CUDA under bf16 autocast); the held-out loss is computed in minibatches of
    `eval_batch_size` (default: all at once) and averaged; `on_step()` is called after every step (progress).
    """
    train, validation = split
    generator = torch.Generator().manual_seed(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=float(settings["lr"]), weight_decay=float(settings.get("weight_decay", 0.0)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_schedule) if lr_schedule else None
    batch_size, patience = int(settings["batch_size"]), int(settings.get("patience", 10))
    device = device or torch.device("cpu")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def batch_loss(positions) -> torch.Tensor:
        with autocast:
            return loss(model, *(tensor[positions].to(device, non_blocking=True) for tensor in inputs)).float()

    def held_out() -> float:
        """Record the held-out loss (and score) of the model as it is now; return what selection minimises."""
        model.eval()
        size = eval_batch_size or len(validation)
        with torch.no_grad():
            total = sum(float(batch_loss(validation[s : s + size])) * len(validation[s : s + size]) for s in range(0, len(validation), size))
            history["validation"].append(total / len(validation))
            if score is None:
                return history["validation"][-1]
            history["score"].append(float(score(model, validation)))
            return history["score"][-1]

    history = {"train": [], "validation": [], **({"score": []} if score else {})}
    best, best_state, waited = float("inf"), None, 0
    if len(validation):
        best = held_out()
        best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    for _ in range(int(settings["epochs"])):
        model.train()
        order = torch.from_numpy(train)[torch.randperm(len(train), generator=generator)]
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            value = batch_loss(batch)
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            if scheduler:
                scheduler.step()
            if on_step:
                on_step()
            total += float(value.detach()) * len(batch)
        history["train"].append(total / max(len(order), 1))
        if len(validation):
            current = held_out()
            if current < best - MIN_IMPROVEMENT * max(abs(best), 1e-2):
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
