"""Post-training: a network fine-tuned end to end on one task's labels becomes an expert of the ensemble.

The recipe of the ECGFounder post-training study (Net1D; its paper finds it beats plain fine-tuning, and from
random initialisation comes close to plain fine-tuning of the pretrained model):

1. preview linear probing: the network frozen, its classifier (`net.dense`) is set to the closed-form linear
   probe of its pooled features (pipeline.stage_two.probe, the heads' probe: ridge, penalty by leave-one-out,
   Platt-scaled to logits), so fine-tuning starts from a calibrated classifier instead of a random one
   (`preview_probe: false` keeps the random one); it trains on the standardised features it was fitted on
   (StandardisedClassifier) and is folded into a plain Linear when training ends;
2. full fine-tuning: every weight trains with AdamW, the learning rate warming up linearly for
   `warmup_epochs` and then decaying along a cosine to zero at `epochs`; stochastic depth is the network's own
   (Net1D's drop path, set by whoever built it); early stopping on held-out training subjects scores the
   start too (pipeline.stage_two.training.fit), so the expert ends no worse than its probe on them, in the
   metric that is reported (training.held_out_score, as the heads do); its value per epoch, history["score"],
   is the run's learning curve.

The network is anything whose forward gives (pooled features [B, D], raw outputs [B, K]) from a `dense`
Linear: this module knows no backbone, the caller builds it (stages/post_train.py builds Net1D). The expert's
predictions come from that classifier: for the gate hold-out's rows (which nothing here trains on: the gate's
training data) and the test rows, in the artifacts the heads write (pipeline.stage_two.predictions), with the
network as it started (after the probe) as the expert's `probe_` candidate. A regression target is learnt
standardised (training rows' mean and std, returned in `target_scaling`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline.errors import ManifestError
from pipeline.progress import progress_bar
from pipeline.seeding import seeded
from pipeline.stage_two.dataset import TaskData
from pipeline.stage_two.losses import head_loss, standardisation, to_prediction
from pipeline.stage_two.probe import fit_probe
from pipeline.stage_two.training import fit, held_out_score, one_thread, validation_split


@dataclass
class PostTrained:
    net: nn.Module  # fine-tuned, in eval mode, on the CPU
    predictions: dict[str, np.ndarray]  # oof (gate rows), test_folds [1, n_test, K], probe_oof, probe_test_folds
    history: dict[str, list[float]]  # train / held-out loss and held-out score per epoch ([0]: the start)
    trained_rows: np.ndarray  # every corpus row that fine-tuning or the probe saw (early-stopping rows included)
    target_scaling: tuple[float, float]  # (mean, std) of a regression target; (0, 1) otherwise
    timings: dict[str, float]


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor per optimiser step: linear warm-up to 1 over `warmup_steps`, then a cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@one_thread()
@torch.no_grad()
def network_outputs(net: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features [N, D], raw outputs [N, K]) on the CPU, in eval mode, in minibatches (bf16 on CUDA)."""
    net.eval()
    features, outputs = [], []
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for start in range(0, len(x), batch_size):
            pooled, raw = net(x[start : start + batch_size].to(device))
            features.append(pooled.float().cpu())
            outputs.append(raw.float().cpu())
    return torch.cat(features), torch.cat(outputs)


class StandardisedClassifier(nn.Module):
    """The classifier W z + b on standardised features z = (f - mean) / scale (fixed buffers), while it trains.

    A random network's pooled features are small (PTB-XL, `cpu` size: std 0.037), so the probe written on the raw
    features has weights ~250x a fresh Linear's (std 9.1 vs 0.036), and AdamW, whose steps are ~lr per weight
    whatever the weight's size, would barely move it: the backbone would fine-tune under a classifier frozen at a
    probe of random features. On standardised features the same probe has weights of the usual size. `folded()`
    is the equal raw-feature Linear W / scale, b - (W / scale) mean, the one the released container holds."""

    def __init__(self, dense: nn.Linear, mean: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.dense = dense
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dense((features - self.mean) / self.scale)

    @torch.no_grad()
    def folded(self) -> nn.Linear:
        weight = self.dense.weight / self.scale
        linear = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.device)
        linear.weight.copy_(weight)
        linear.bias.copy_(self.dense.bias - weight @ self.mean)
        return linear


def uses_preview_probe(settings: dict) -> bool:
    """params `post_train.preview_probe`: true, false, or auto = only on a checkpoint's (pretrained) features.

    From random initialisation a probe of random features is no preview: on PTB-XL (`cpu` size) it held fine-tuning
    back, best held-out macro AUROC 0.885 vs 0.907 without it (superclass) and 0.917 vs 0.979 (rhythm), while
    stochastic depth alone matched or beat plain fine-tuning (benchmarks/ptbxl_post_train.md)."""
    value = settings["preview_probe"]
    return settings["init"] == "checkpoint" if value == "auto" else bool(value)


def set_preview_probe(task, net: nn.Module, features: torch.Tensor, target: torch.Tensor) -> None:
    """Make `net.dense` the linear probe of the fit rows' pooled `features`, as a StandardisedClassifier (fold it
    with `fold_classifier` when training is done).

    One scale for every feature (their mean std), not one per feature: the ridge penalty then treats the
    features as the classifier's own weight decay will, and a feature that is nearly constant on these rows
    (a random network has some) is not blown up into noise on others."""
    mean, scale = features.mean(0), features.std(0).mean().clamp_min(1e-6)
    weight, bias = fit_probe(task, ((features - mean) / scale).numpy(), target.numpy())
    dense = nn.Linear(features.shape[1], weight.shape[0]).to(net.dense.weight.device)
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(weight).float())
        dense.bias.copy_(torch.from_numpy(bias).float())
    net.dense = StandardisedClassifier(dense, mean.to(dense.weight.device), scale.to(dense.weight.device))


def fold_classifier(net: nn.Module) -> None:
    """`net.dense` back to a plain Linear (the network's own structure and state_dict keys)."""
    if isinstance(net.dense, StandardisedClassifier):
        net.dense = net.dense.folded()


def post_train(data: TaskData, net: nn.Module, inputs: np.ndarray, rows: np.ndarray, settings: dict, device: torch.device, name: str) -> PostTrained:
    """Post-train `net` on the task's training rows; `inputs` [len(rows), C, T] are the network's inputs for the
    sorted corpus `rows` (the training, gate hold-out and test rows at least). `name` labels the progress bar."""
    if not len(data.gate):
        raise ManifestError("params.yaml: split: post-training needs a gate hold-out (split.gate_folds for method fold, "
                            "split.gate_fraction otherwise): the gate must not train on an expert's in-sample predictions")
    task, seed, batch_size = data.task, int(settings["seed"]), int(settings["batch_size"])
    position = lambda selection: np.searchsorted(rows, selection)  # noqa: E731
    train, gate, test = position(data.train), position(data.gate), position(data.test)
    fit_part, held_part = validation_split(data.subjects[data.train], float(settings["val_fraction"]), seed)
    fitted, held = train[fit_part], train[held_part]
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    y = torch.from_numpy(np.asarray(data.target[rows]))
    scaling = (0.0, 1.0)
    if task.type == "regression":
        scaling = standardisation(y[fitted])
        y = (y - scaling[0]) / scaling[1]

    def predictions(selection: np.ndarray, model: nn.Module = net) -> np.ndarray:
        raw = network_outputs(model, x[selection], batch_size, device)[1]
        return to_prediction(task, raw * scaling[1] + scaling[0]).numpy()  # (0, 1) but for regression

    timings = {}
    with seeded(seed):
        net.to(device)
        start = time.perf_counter()
        if uses_preview_probe(settings):
            set_preview_probe(task, net, network_outputs(net, x[fitted], batch_size, device)[0], y[fitted])
        timings["probe_s"] = time.perf_counter() - start
        started = {"probe_oof": predictions(gate), "probe_test_folds": predictions(test)[None]}

        steps_per_epoch = math.ceil(len(fitted) / batch_size)
        total_steps = int(settings["epochs"]) * steps_per_epoch
        schedule = warmup_cosine(round(float(settings["warmup_epochs"]) * steps_per_epoch), total_steps)
        stamps = [time.perf_counter()]
        loss = lambda model, xb, yb: head_loss(task, model(xb)[1], yb)  # noqa: E731
        with progress_bar(f"post-train {name} {task.name}: steps", total_steps) as advance:

            def on_step() -> None:
                stamps.append(time.perf_counter())
                advance()

            score = held_out_score(task, data.target[rows], held, lambda model, selection: predictions(selection, model))
            history = fit(net, (x, y), loss, settings, seed, (fitted, held), lr_schedule=schedule, device=device,
                          eval_batch_size=batch_size, on_step=on_step, score=score)
        timings["fine_tune_s"] = time.perf_counter() - stamps[0]
        timings["steps"] = len(stamps) - 1
        timings["step_s"] = float(np.median(np.diff(stamps))) if len(stamps) > 1 else float("nan")  # median: epoch ends hold validation
        fold_classifier(net)
        final = {"oof": predictions(gate), "test_folds": predictions(test)[None]}
    net.cpu().eval()
    trained = rows[np.union1d(fitted, held)]
    return PostTrained(net, {**final, **started}, history, trained, scaling, timings)
