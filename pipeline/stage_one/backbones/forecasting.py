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

Checkpoints of any size. EnECG sets each model's sizes in a `Configs` class of its main.py (seq_len,
pred_len, d_model, d_ff, e_layers, num_kernels, top_k, kernel_size, ...) and saves a bare state_dict, so a
user's own EnECG-trained variant is a state_dict of other shapes. The loaders read every size the tensors
determine from the checkpoint itself (`Size`: the value and the key it was read from) and take the rest,
which no tensor determines, from an optional `checkpoint_config.json` beside the checkpoint file (a JSON
object named as EnECG's Configs attributes, e.g. {"top_k": 5}; the published values are the defaults);
a size stated there too must equal the tensors'. The model is then built at those sizes and every key and
shape checked (`load_state_dict_strict`): a checkpoint whose keys or shapes disagree with each other is
refused with the keys listed and the sizes that were read. The series a checkpoint of `seq_len` L is fed
is a 10 s record resampled to L samples (L / 10 Hz; 50 Hz for the published 500), as EnECG's data loader
does (`--downsample_size_ts`); `sampling_rate` in checkpoint_config.json says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Callable, ClassVar

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
    register_backbone,
    register_pretrainer,
    windows,
)

SEQ_LEN = 500
RECORD_SECONDS = 10.0  # EnECG resamples a 10 s record to the model's seq_len samples
INPUT_SPEC = InputSpec(
    sampling_rate=SEQ_LEN / RECORD_SECONDS,
    samples=SEQ_LEN,
    normalisation="z-score per record over all its leads together (one mean, one std), as EnECG",
)
CHECKPOINT_CONFIG = "checkpoint_config.json"  # beside the checkpoint file: the settings no tensor determines
# The attributes of EnECG's `Configs` / `ConfigsTimes` (main.py load_model_dlinear / load_model_timesnet), which a
# checkpoint_config.json may copy as they are; a backbone uses the ones that matter to it, `sampling_rate` is ours.
ENECG_CONFIG_KEYS = frozenset({
    "seq_len", "pred_len", "label_len", "d_model", "d_ff", "num_kernels", "top_k", "e_layers", "enc_in", "c_out",
    "embed", "freq", "dropout", "moving_avg", "weights", "kernel_size", "task_name", "sampling_rate",
})


@dataclasses.dataclass(frozen=True)
class Size:
    """A model size read from a checkpoint: its value and what in the state dict gave it (a key and that
    tensor's shape, or the keys counted); `source` None means nothing did and it is the published default."""

    value: int
    source: str | None = None

    def describe(self, name: str) -> str:
        return f"{name} {self.value} ({'from ' + self.source if self.source else 'the published default'})"


def size_from(state: dict, candidates: list[tuple[str, Callable[[tuple[int, ...]], int]]], default: int) -> Size:
    """The size given by the first candidate key that holds a tensor: (key, shape -> size); else `default`."""
    for key, read in candidates:
        value = state.get(key)
        if isinstance(value, torch.Tensor):
            shape = tuple(value.shape)
            try:
                return Size(int(read(shape)), f"{key} {shape}")
            except IndexError:  # too few dimensions: the strict check names the key
                continue
    return Size(default)


def read_state_dict(path: Path, source: str) -> dict:
    """EnECG's checkpoint format: a bare state_dict of tensors. `source` says where a good one comes from."""
    state = load_torch_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not the bare state_dict EnECG saves; "
            f"get one from: {source}"
        )
    others = sorted(str(key) for key, value in state.items() if not isinstance(value, torch.Tensor))
    if others:
        raise CheckpointError(f"checkpoint {path} is not a state_dict of tensors: keys {others[:20]} hold other values")
    return state


def checkpoint_config(path: Path, config: dict | None = None) -> tuple[dict, str]:
    """The settings for checkpoint `path`: `config` when given, else checkpoint_config.json beside it, else {};
    with where they came from. Keys outside EnECG's Configs attributes are refused (a typo would be ignored)."""
    where = "the build's config"
    if config is None:
        file = Path(path).parent / CHECKPOINT_CONFIG
        if not file.is_file():
            return {}, "defaults"
        where = str(file)
        try:
            config = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{file}: not readable JSON ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: expected a JSON object of EnECG Configs attributes, got {type(config).__name__}")
    unknown = sorted(set(config) - ENECG_CONFIG_KEYS)
    if unknown:
        raise CheckpointError(f"{where}: unknown settings {unknown}; known (EnECG's Configs attributes): {sorted(ENECG_CONFIG_KEYS)}")
    return dict(config), where


def setting(config: dict, where: str, name: str, default, valid: Callable[[object], bool], expected: str):
    """One setting of `config` (or its default), refused naming the file and key unless `valid`."""
    value = config.get(name, default)
    if isinstance(value, bool) or not valid(value):
        raise CheckpointError(f"{where}: {name} must be {expected}; got {value!r}")
    return value


def whole(low: int, high: float = math.inf) -> Callable[[object], bool]:
    """A validity test for `setting`: a whole number from `low` to `high`."""
    return lambda value: isinstance(value, int) and low <= value <= high


def sampling_rate(config: dict, where: str, seq_len: int) -> float:
    """The rate (Hz) of the series: `sampling_rate` of the config, else seq_len samples per 10 s record."""
    rate = setting(
        config, where, "sampling_rate", seq_len / RECORD_SECONDS,
        lambda value: isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 20_000,
        "a rate in Hz, above 0 and at most 20000",
    )
    return float(rate)


def checked_sizes(sizes: dict[str, Size], config: dict, where: str, path: Path) -> dict[str, Size]:
    """The sizes read from the tensors, each at least 1 and equal to the config's where it states one too."""
    for name, size in sizes.items():
        if size.value < 1:
            raise CheckpointError(f"checkpoint {path}: {size.describe(name)} is not a size")
        if name in config and size.source is not None and config[name] != size.value:
            raise CheckpointError(
                f"{where}: {name} is {config[name]!r}, but the checkpoint's tensors give {size.describe(name)}"
            )
    return sizes


def series_spec(seq_len: int, rate: float) -> InputSpec:
    """The input of a forecaster over `seq_len`-sample series at `rate` Hz (INPUT_SPEC at the published size)."""
    return dataclasses.replace(INPUT_SPEC, sampling_rate=float(rate), samples=int(seq_len))


def load_sized(make: Callable[..., nn.Module], state: dict, path: Path, sizes: dict[str, Size], **settings) -> nn.Module:
    """`make(**sizes, **settings)` with the state_dict loaded, every key and shape checked.

    The shapes are first compared on a model built on the meta device (no memory): a checkpoint whose key
    names imply a huge model allocates nothing before it is refused, and the refusal lists the keys
    (load_state_dict_strict's message) and the sizes read from the checkpoint.
    """
    kwargs = {name: size.value for name, size in sizes.items()} | settings
    read = ", ".join(size.describe(name) for name, size in sizes.items())
    try:
        with torch.device("meta"):
            skeleton = make(**kwargs)
        expected = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
        if expected != {key: tuple(value.shape) for key, value in state.items()}:
            load_state_dict_strict(skeleton, state, path)  # raises, listing the keys
    except CheckpointError as error:
        raise CheckpointError(f"{error}\n  sizes read from the checkpoint: {read}") from None
    model = make(**kwargs)
    load_state_dict_strict(model, state, path)
    return model


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
    """A frozen EnECG forecaster as a backbone: the record z-score of `zscore_record`, then the subclass's forward.

    A subclass declares its model (`net_class`, built with keyword sizes and settings), how a state dict gives
    its sizes (`read_sizes`), the settings no tensor determines (`read_settings`, from the checkpoint config)
    and its embedding's size per lead (`lead_features`); `from_checkpoint` then builds it at any checkpoint's
    size. `config` is this checkpoint's: the registered one with the input spec and embedding size of its sizes
    (equal to the registered one for the published sizes); `checkpoint_config` holds every size and setting
    the model was built with.
    """

    net_class: ClassVar[Callable[..., nn.Module]]

    def __init__(self, net: nn.Module, config=None, settings: dict | None = None):
        super().__init__()
        self.net = net
        if config is not None:
            self.config = config
        self.checkpoint_config = dict(settings or {})

    @staticmethod
    def read_sizes(state: dict, path: Path) -> dict[str, Size]:
        """Every size the state dict's shapes and keys determine (the subclass's)."""
        raise NotImplementedError

    @staticmethod
    def read_settings(sizes: dict[str, Size], settings: dict, where: str, path: Path) -> dict:
        """The model's other settings, read and checked from the checkpoint config `settings` (from `where`)."""
        return {}

    @staticmethod
    def lead_features(settings: dict) -> int:
        """The embedding's size per lead for a checkpoint's sizes and settings (the subclass's)."""
        raise NotImplementedError

    @classmethod
    def load_net(cls, path: Path, config: dict | None = None) -> tuple[nn.Module, dict]:
        """The model of the checkpoint's own size, every key and shape checked, and every size and setting it
        was built with, with the series' `sampling_rate` (default seq_len / 10 s).

        The bare state_dict at `path` gives the sizes, checked against the checkpoint config (`config`, else
        checkpoint_config.json beside the checkpoint), which gives the settings no tensor determines.
        """
        state = read_state_dict(path, cls.config.source)
        settings, where = checkpoint_config(path, config)
        found = checked_sizes(cls.read_sizes(state, path), settings, where, path)
        extra = cls.read_settings(found, settings, where, path)
        rate = sampling_rate(settings, where, found["seq_len"].value)
        net = load_sized(cls.net_class, state, path, found, **extra)
        return net, {name: size.value for name, size in found.items()} | extra | {"sampling_rate": rate}

    @classmethod
    def from_checkpoint(cls, path: Path, config: dict | None = None) -> "ForecasterBackbone":
        """The backbone at the checkpoint's size (`load_net`): the registered config with the input spec and
        embedding size of those sizes (the registered config itself at the published ones)."""
        net, settings = cls.load_net(path, config)
        spec = series_spec(settings["seq_len"], settings["sampling_rate"])
        sized = dataclasses.replace(cls.config, spec=spec, embedding_dim=cls.lead_features(settings) * len(spec.leads))
        return cls(net, sized, settings)

    def preprocess(self, signals: np.ndarray) -> np.ndarray:
        return zscore_record(signals)


def register(backbone: type[ForecasterBackbone], defaults: dict) -> tuple[Callable[..., Backbone], Callable[..., dict]]:
    """Register a forecaster's builder (`build(checkpoint, config=None)`: the backbone at the checkpoint's size,
    `config` replacing checkpoint_config.json) and its pretrainer (`pretrain(signals, out, settings, seed)`:
    next-sample forecasting on the corpus, `defaults` its settings); returns both."""

    @register_backbone(backbone.config)
    def build(checkpoint: Path, config: dict | None = None) -> Backbone:
        return backbone.from_checkpoint(checkpoint, config)

    @register_pretrainer(backbone.config.name)
    def pretrain_backbone(signals: np.ndarray, out: Path, settings: dict, seed: int) -> dict:
        return pretrain(backbone.net_class, signals, out, settings, seed, defaults)

    return build, pretrain_backbone
