"""What EnECG's two forecasting backbones (DLinear, TimesNet) share: their input, and their pretraining.

Input. EnECG reads a 10 s record, z-scores it with ONE mean and ONE standard deviation over all 12 leads
together (`data_loader.read_and_preprocess_ecg`), resamples it to 500 samples (50 Hz) and feeds a single
lead, chosen by the row index modulo 12, as one univariate series of `SEQ_LEN` samples. Both models are
univariate (DLinear has `individual=False`, TimesNet `enc_in=1`), so we run them on every lead of the
record, each lead its own series: per-record reproducible, unlike the row-index choice. One difference
remains: EnECG z-scores at 500 Hz before resampling, we after (the corpus reaches the backbone already at
50 Hz); the mean hardly changes, the standard deviation loses the (small) power above 25 Hz.

Pretraining. EnECG's DLinear and TimesNet are forecasters (task "long_term_forecast", `pred_len=1`)
pretrained by its authors; we pretrain them likewise, to forecast the next sample of the ECG. A corpus
record is exactly `SEQ_LEN` samples, so no sample
follows the window. We make training pairs by shifting instead: for a shift s in 1..max_shift, the input
is s copies of the first value followed by x[:SEQ_LEN - s] (the edge rule of DLinear's moving average)
and the target is x[SEQ_LEN - s], the sample that follows that input. Every lead of every record is its
own series, z-scored like the backbone's `preprocess`. The loss is the mean squared error of the next
sample, as in Time-Series-Library forecasting; the checkpoint is the model's bare `state_dict` saved by
`torch.save`, EnECG's own format, so a published checkpoint and ours are interchangeable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline.errors import CheckpointError, ManifestError
from pipeline.progress import progress_bar
from pipeline.seeding import seeded
from pipeline.stage_one.backbones import (
    Backbone,
    InputSpec,
    load_state_dict_strict,
    load_torch_file,
    windows,
)

SEQ_LEN = 500
INPUT_SPEC = InputSpec(
    sampling_rate=50.0,
    samples=SEQ_LEN,
    normalisation="z-score per record over all its leads together (one mean, one std), as EnECG",
)


def zscore_record(signals: np.ndarray) -> np.ndarray:
    """EnECG's normalisation of [B, leads, T] millivolts: one mean and std per record, over all its leads.

    Like EnECG, NaN/inf become 0 first and a flat record is only centred (its std is 0).
    """
    x = np.nan_to_num(np.asarray(signals, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = x.std(axis=(1, 2), keepdims=True)
    return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def shifted_pairs(
    series: torch.Tensor, series_index: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [n, L] and targets [n] for (series, shift) pairs: input j is x[max(j - s, 0)], target x[L - s]."""
    length = series.shape[1]
    positions = (torch.arange(length, device=series.device) - shift[:, None]).clamp(min=0)
    return series[series_index[:, None], positions], series[series_index, length - shift]


def load_checkpoint(model: nn.Module, path: Path, source: str) -> nn.Module:
    """Load EnECG's checkpoint format, a bare state_dict, into `model` with every key and shape checked.

    `source` tells the user where a good checkpoint comes from, should this one not fit.
    """
    state = load_torch_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not the bare state_dict EnECG saves; "
            f"get one from: {source}"
        )
    load_state_dict_strict(model, state, path)
    return model


def save_state_dict(model: nn.Module, out: Path) -> None:
    """`torch.save` the bare state_dict (EnECG's format) to a temporary name beside `out`, then rename it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        torch.save(model.state_dict(), temporary)
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)


def resolve_settings(settings: dict, defaults: dict) -> dict:
    """The defaults overridden by `settings`; an unknown key is refused, since a typo would be silently ignored."""
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ManifestError(f"unknown pretrain settings {unknown}; known settings: {sorted(defaults)}")
    return {**defaults, **settings}


def pretrain(
    make_model: Callable[[], nn.Module],
    signals: np.ndarray,
    out: Path,
    settings: dict,
    seed: int,
    defaults: dict,
) -> dict:
    """Train `make_model()` to forecast the next sample of every lead, then save it to `out`.

    The model maps series [n, SEQ_LEN] to their next sample [n] with `next_sample`. `signals` is
    [N, leads, T] float32 millivolts at 50 Hz; a record longer than `SEQ_LEN` is split into windows (see
    `pipeline.stage_one.backbones.windows`), each window a series. `defaults` are the backbone's settings: epochs,
    batch_size, lr (Adam), max_shift (pairs per series, see the module docstring), eval_windows (about this
    many pairs, from whole series held out of training (one, or at most a fifth), on which the loss is measured
    before and after training) and device ("auto": CUDA
    when available). The same seed gives the same weights on the same machine and thread count.
    Returns a JSON-able summary: sizes, the initial and final loss, the loss of repeating the last input
    sample (the trivial forecast to beat), and the mean training loss of every epoch.
    """
    settings = resolve_settings(settings, defaults)
    epochs, batch_size, max_shift = int(settings["epochs"]), int(settings["batch_size"]), int(settings["max_shift"])
    device = settings["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not 1 <= max_shift < SEQ_LEN:
        raise ManifestError(f"pretrain max_shift must be in 1..{SEQ_LEN - 1}; got {max_shift}")
    signals = np.asarray(signals, dtype=np.float32)
    if signals.ndim != 3 or signals.shape[0] == 0:
        raise ManifestError(f"pretraining needs signals [records, leads, samples]; got shape {signals.shape}")
    series = windows(torch.from_numpy(zscore_record(signals)), SEQ_LEN).reshape(-1, SEQ_LEN).to(device)
    n_pairs = len(series) * max_shift

    def pairs(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return shifted_pairs(series, ids // max_shift, ids % max_shift + 1)

    with seeded(seed):
        model = make_model().to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=float(settings["lr"]))
        generator = torch.Generator().manual_seed(seed)
        # Whole series are held out for the reported loss, so it is measured on pairs never trained on.
        order = torch.randperm(len(series), generator=generator)
        held_out = min(max(1, len(series) // 5), -(-int(settings["eval_windows"]) // max_shift)) if len(series) > 1 else 0
        ids_of = lambda chosen: (chosen[:, None] * max_shift + torch.arange(max_shift)).reshape(-1)  # noqa: E731
        evaluation, training = ids_of(order[:held_out]).to(device), ids_of(order[held_out:])
        n_pairs = len(training)

        @torch.no_grad()
        def evaluation_loss(forecast: Callable[[torch.Tensor], torch.Tensor]) -> float:
            if not len(evaluation):
                return float("nan")  # a single series: nothing to hold out
            model.eval()
            total = 0.0
            for ids in evaluation.split(batch_size):
                inputs, targets = pairs(ids)
                total += nn.functional.mse_loss(forecast(inputs), targets, reduction="sum").item()
            return total / len(evaluation)

        initial_loss = evaluation_loss(model.next_sample)
        epoch_losses = []
        with progress_bar(f"pretrain {type(model).__name__}", total=epochs * -(-n_pairs // batch_size)) as advance:
            for _ in range(epochs):
                model.train()
                total = 0.0
                for ids in training[torch.randperm(n_pairs, generator=generator)].to(device).split(batch_size):
                    inputs, targets = pairs(ids)
                    loss = nn.functional.mse_loss(model.next_sample(inputs), targets)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    total += loss.item() * len(ids)
                    advance()
                epoch_losses.append(total / n_pairs)
        final_loss = evaluation_loss(model.next_sample)
        persistence_loss = evaluation_loss(lambda inputs: inputs[:, -1])

    save_state_dict(model.cpu(), out)
    return {
        "series": len(series),
        "windows": n_pairs,
        "held_out_windows": len(evaluation),
        "max_shift": max_shift,
        "epochs": epochs,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "persistence_loss": persistence_loss,
        "epoch_losses": epoch_losses,
    }


class ForecasterBackbone(Backbone):
    """A frozen EnECG forecaster as a backbone: the record z-score of `zscore_record`, then the subclass's forward."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def preprocess(self, signals: np.ndarray) -> np.ndarray:
        return zscore_record(signals)
