"""MiniRocket (Dempster, Schmidt & Webb, KDD 2021), multivariate, in torch so it runs batched on CPU or GPU.

MiniRocket needs no download: its "checkpoint" is the handful of numbers fitted on the corpus by
`enecg pretrain --model minirocket`, which makes it the backbone a default ensemble can always use.

The transform, as in aeon's `MiniRocket` (the maintained reference, which this module reproduces given the
same fitted parameters):

- 84 fixed kernels of length 9: weight -1 everywhere and 2 at three of the nine taps (every choice of three,
  in `itertools.combinations` order). The weights sum to zero, so a constant offset cancels wherever the
  kernel lies fully inside the signal.
- Dilations 2**e for e spread evenly on [0, log2((samples - 1) / 8)], rounded down and deduplicated; each
  dilation gets a share of the features proportional to how often it occurred before deduplication.
- Multivariate: every (dilation, kernel) pair sums the convolutions of a random subset of 1..min(C, 9) channels.
- Zero "same" padding of 4 * dilation per side; pairs with an odd (dilation index + kernel index) count only
  the outputs where the kernel lies fully inside the signal ("valid" part), the others all outputs.
- Each feature is a PPV, the proportion of outputs above a bias. A (dilation, kernel) pair's biases are
  quantiles of its full-length output on one randomly chosen training example, at the low-discrepancy
  quantiles frac(n * golden ratio) for the running feature number n = 1, 2, ...

Input: 12 leads at 100 Hz, windows of 1,000 samples (10 s keeps the convolutions cheap and matches the
corpus record). No normalisation, as in MiniRocket itself: features are computed on millivolts, the biases
are in millivolts too, and PPV against a zero-sum kernel already ignores baseline offset in the valid part.

Checkpoint (`checkpoint.pth`): torch.save of a plain dict, loaded with weights_only=True: dilations [D] and
num_features_per_dilation [D] int64, channel_mask [D, 84, 12] bool, biases [84 * sum(num_features_per_dilation)]
float64 (aeon's float32 biases load too), samples (int, the window the fit saw).

Exact arithmetic: a PPV changes when an output moves across its bias, and outputs exactly equal to a bias
are common on real ECGs (WFDB samples are ADC counts / gain, so outputs repeat the same few values). Every
output is a sum of at most 81 float32 samples times -1 or 2, which float64 holds exactly (unless the
samples' magnitudes span more than ~2^20), so the transform runs in float64 and as a matrix product (not
cuDNN, which may pick FFT/Winograd; float64 is never TF32-rounded or autocast). It is then exact, ties
included (an output equal to its bias is not counted), whatever the device or summation order, and our own
fit keeps its biases in float64 so that they stay exact too. aeon computes in float32, so where an output
lies within float32 rounding of its bias, aeon's count can differ from the exact one: on PTB-XL with aeon's
own parameters, 4.6% of features differ, by one output in the median, and all of them lie between our
exact features with the biases moved by +-1e-6 mV (benchmarks/minirocket_vs_aeon.md). On data that float32
holds exactly, the features are equal. Runs on CPU and CUDA (MPS has no float64).
"""

from __future__ import annotations

import os
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import CheckpointError, EnECGError
from pipeline.stage_one.backbones import (
    Backbone,
    BackboneConfig,
    InputSpec,
    load_torch_file,
    register_backbone,
    register_pretrainer,
    windows,
)

KERNEL_LENGTH = 9
# the 84 kernels [84, 9]: weight -1, and 2 at each choice of three taps
KERNELS = torch.full((84, KERNEL_LENGTH), -1.0, dtype=torch.float64).scatter_(
    1, torch.tensor(list(combinations(range(KERNEL_LENGTH), 3))), 2.0
)
NUM_KERNELS = len(KERNELS)
MAX_CHANNELS_PER_KERNEL = 9
CHECKPOINT_KEYS = ("biases", "channel_mask", "dilations", "num_features_per_dilation", "samples")
PRETRAIN_HINT = "re-create it with `enecg pretrain --model minirocket`"

CONFIG = BackboneConfig(
    name="minirocket",
    spec=InputSpec(sampling_rate=100.0, samples=1000, normalisation="none (PPV features on raw millivolts)"),
    embedding_dim=9996,
    checkpoint_file="checkpoint.pth",
    source="fitted on the corpus by `enecg pretrain --model minirocket`",
    pretrainable=True,
    trained_on_source=(
        "no published checkpoint: `enecg pretrain --model minirocket` fits it on this corpus's own training "
        "records, without labels (its PPV biases are quantiles of their convolution outputs)"
    ),
)


def kernel_weights(channel_mask: torch.Tensor) -> torch.Tensor:
    """Weights [84, C * 9] (float64, laid out like `taps`) of one dilation's kernels on their own channels.

    Summing a kernel's convolutions over its channel subset is one convolution whose weight is zero on the
    other channels, so one matrix product computes all 84 multivariate kernels of a dilation at once.
    """
    return (KERNELS[:, None, :] * channel_mask[:, :, None]).flatten(1)


def taps(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """[N, C, T] -> [N, C * 9, T]: the input under each tap of a dilated kernel, zero-padded to length T,
    so that kernel outputs are one matrix product with the [84, C * 9] weights."""
    padding = (KERNEL_LENGTH - 1) * dilation // 2
    return F.pad(x, (padding, padding)).unfold(-1, x.shape[-1], dilation).flatten(1, 2)


def valid_only_kernels(dilation_index: int) -> slice:
    """The kernels that count only outputs where they lie fully inside the signal: every other kernel,
    starting with kernel 1 at even dilation indices and kernel 0 at odd ones."""
    return slice((dilation_index + 1) % 2, None, 2)


def count_true(flags: torch.Tensor) -> torch.Tensor:
    """Number of True along the last dim (a multiple of 8 long), 8 flags per int64 word.

    torch sums a bool tensor by casting every flag to int64, which made it the slowest step of the
    transform on a CPU; summing the flags as bytes packed in words is several times faster. Up to 127 words
    are added at a time, so no byte lane exceeds 127 and nothing carries into the next lane or the sign.
    """
    total = 0
    for words in flags.view(torch.int64).split(127, dim=-1):
        lanes = words.sum(-1)
        total = total + sum((lanes >> (8 * byte)) & 0xFF for byte in range(8))
    return total


class MiniRocket(Backbone):
    """The MiniRocket transform for fitted parameters; `forward` averages the features of each window."""

    config = CONFIG

    def __init__(self, checkpoint: dict):
        super().__init__()
        self.samples = int(checkpoint["samples"])
        self.dilations = [int(d) for d in checkpoint["dilations"]]
        self.features_per_dilation = [int(n) for n in checkpoint["num_features_per_dilation"]]
        self.embedding_dim = NUM_KERNELS * sum(self.features_per_dilation)
        mask = checkpoint["channel_mask"].bool()
        self.register_buffer("weight", torch.stack([kernel_weights(m) for m in mask]))
        self.register_buffer("biases", checkpoint["biases"].double())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, samples] -> float64 PPV features [N, embedding_dim] in [0, 1], in aeon's feature order.

        The outputs a valid-only kernel must not count are set to -inf, so one comparison over all outputs
        serves both kinds of kernels; rows are padded with -inf to a multiple of 8 for `count_true`.
        """
        x = x.double()
        length = x.shape[-1]
        out, start = [], 0
        for j, (dilation, count) in enumerate(zip(self.dilations, self.features_per_dilation)):
            response = self.weight[j] @ taps(x, dilation)  # [N, 84, T]
            pad = (KERNEL_LENGTH - 1) * dilation // 2
            valid_only = valid_only_kernels(j)
            response[:, valid_only, :pad] = -torch.inf
            response[:, valid_only, length - pad :] = -torch.inf
            if length % 8:
                response = F.pad(response, (0, -length % 8), value=-torch.inf)
            bias = self.biases[start : start + NUM_KERNELS * count].view(NUM_KERNELS, count)
            start += NUM_KERNELS * count
            positive = count_true(response[:, :, None, :] > bias[None, :, :, None])  # [N, 84, count]
            counted = torch.full((NUM_KERNELS, 1), float(length), dtype=x.dtype, device=x.device)
            counted[valid_only] = length - 2 * pad
            out.append((positive / counted).flatten(1))
        return torch.cat(out, dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, C, T] -> {"embedding": [B, embedding_dim]}: windows of `samples` (a short record zero-padded
        at the end, a trailing partial window dropped), each transformed, their features averaged.

        Windows go through `features` a few at a time: on a CPU 8 keep each dilation's tensors in cache
        (1.5x faster than 32), on a GPU 256 bound the comparison flags to ~0.5 GB.
        """
        segments = windows(x, self.samples)
        batch, count = segments.shape[:2]
        chunk = 8 if x.device.type == "cpu" else 256
        features = torch.cat([self.features(part) for part in segments.flatten(0, 1).split(chunk)])
        return {"embedding": features.view(batch, count, -1).mean(1).float()}


def check_checkpoint(checkpoint: object, source: Path | str) -> dict:
    """Refuse a parameter dict that is not a consistent MiniRocket fit, naming the file and the problem.

    The shapes are fitted, not fixed by an architecture, so instead of comparing them with a model's state
    dict (load_state_dict_strict) this checks that the pieces agree with each other.
    """

    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"MiniRocket checkpoint {source}: {problem}; {PRETRAIN_HINT}")

    if not isinstance(checkpoint, dict):
        raise refuse(f"expected a dict of fitted parameters, found {type(checkpoint).__name__}")
    missing = sorted(set(CHECKPOINT_KEYS) - set(checkpoint))
    unexpected = sorted(set(checkpoint) - set(CHECKPOINT_KEYS))
    if missing or unexpected:
        raise refuse(f"missing keys {missing}, unexpected keys {unexpected}")
    if not isinstance(checkpoint["samples"], int):
        raise refuse("samples must be an int")
    for key in CHECKPOINT_KEYS[:-1]:
        if not isinstance(checkpoint[key], torch.Tensor):
            raise refuse(f"{key} must be a tensor")
    dilations, counts = checkpoint["dilations"], checkpoint["num_features_per_dilation"]
    biases, mask = checkpoint["biases"], checkpoint["channel_mask"]
    if dilations.ndim != 1 or dilations.numel() == 0 or dilations.is_floating_point() or (dilations < 1).any():
        raise refuse(f"dilations must be a non-empty 1-D tensor of positive ints, found {tuple(dilations.shape)}")
    if counts.shape != dilations.shape or counts.is_floating_point() or (counts < 1).any():
        raise refuse(f"num_features_per_dilation {tuple(counts.shape)} must give positive ints per dilation")
    if checkpoint["samples"] <= (KERNEL_LENGTH - 1) * int(dilations.max()):
        raise refuse(f"samples {checkpoint['samples']} leave no valid outputs at dilation {int(dilations.max())}")
    expected = NUM_KERNELS * int(counts.sum())
    if biases.shape != (expected,) or not biases.is_floating_point():
        raise refuse(f"biases: shape {tuple(biases.shape)} vs ({expected},) from num_features_per_dilation")
    if mask.dtype != torch.bool or mask.ndim != 3 or mask.shape[:2] != (len(dilations), NUM_KERNELS):
        raise refuse(f"channel_mask: {mask.dtype} {tuple(mask.shape)} vs bool ({len(dilations)}, 84, channels)")
    if not mask.any(-1).all():
        raise refuse("channel_mask gives a kernel no channel")
    return checkpoint


def checkpoint_from_aeon(parameters: tuple, n_channels: int, samples: int) -> dict:
    """Our checkpoint dict from a fitted aeon `MiniRocket().parameters` tuple (for the equality tests)."""
    per_combination, channel_indices, dilations, counts, biases = parameters
    mask = torch.zeros(len(per_combination), n_channels, dtype=torch.bool)
    ends = np.cumsum(per_combination)
    for combination, (start, end) in enumerate(zip(ends - per_combination, ends)):
        mask[combination, torch.from_numpy(channel_indices[start:end].astype(np.int64))] = True
    return {
        "biases": torch.from_numpy(np.asarray(biases, dtype=np.float32)),
        "channel_mask": mask.view(len(dilations), NUM_KERNELS, n_channels),
        "dilations": torch.from_numpy(np.asarray(dilations, dtype=np.int64)),
        "num_features_per_dilation": torch.from_numpy(np.asarray(counts, dtype=np.int64)),
        "samples": int(samples),
    }


def fit_dilations(samples: int, num_features: int, max_dilations_per_kernel: int) -> tuple[list[int], list[int]]:
    """Dilations spread exponentially up to (samples - 1) / 8, and how many features each gets per kernel."""
    per_kernel = num_features // NUM_KERNELS
    steps = min(per_kernel, max_dilations_per_kernel)
    exponents = np.linspace(0, np.log2((samples - 1) / (KERNEL_LENGTH - 1)), steps)
    dilations, occurrences = np.unique((2**exponents).astype(np.int64), return_counts=True)
    counts = (occurrences * (per_kernel / steps)).astype(np.int64)
    for i in range(per_kernel - int(counts.sum())):  # hand out the rounding remainder from the smallest dilation
        counts[i % len(counts)] += 1
    return dilations.tolist(), counts.tolist()


def quantiles(count: int) -> torch.Tensor:
    """The low-discrepancy quantiles frac(n * golden ratio), n = 1..count, rounded to float32 as aeon does."""
    golden = (np.sqrt(5) + 1) / 2
    return torch.tensor((np.arange(1, count + 1) * golden) % 1, dtype=torch.float32).double()


def fit_biases(
    signals: torch.Tensor, dilations: list[int], counts: list[int], mask: torch.Tensor, examples: torch.Tensor
) -> torch.Tensor:
    """Biases [84 * sum(counts)]: for (dilation j, kernel k), quantiles of the kernel's full-length output on
    training example examples[j, k], linearly interpolated like `np.quantile`.

    The 84 pairs of one dilation each see their own example, so each sums its channels first and then
    convolves that one row. Exact in float64 like `MiniRocket.features`, so a quantile between two equal
    outputs is exactly that output.
    """
    levels = quantiles(NUM_KERNELS * sum(counts))
    biases, start = [], 0
    for j, (dilation, count) in enumerate(zip(dilations, counts)):
        chosen = signals[examples[j]].double()  # [84, C, T]
        summed = mask[j].double()[:, None, :] @ chosen  # [84, 1, T]
        ordered = (KERNELS[:, None, :] @ taps(summed, dilation))[:, 0].sort(dim=-1).values  # [84, T]
        position = levels[start : start + NUM_KERNELS * count].view(NUM_KERNELS, count) * (ordered.shape[-1] - 1)
        below = position.floor().long()
        above = (below + 1).clamp(max=ordered.shape[-1] - 1)
        low, high = ordered.gather(1, below), ordered.gather(1, above)
        biases.append((low + (high - low) * (position - below)).flatten())
        start += NUM_KERNELS * count
    return torch.cat(biases)


def fit(signals: np.ndarray, num_features: int = 9996, max_dilations_per_kernel: int = 32, seed: int = 0) -> dict:
    """Fit MiniRocket on [N, C, T] float32 signals; the same procedure as aeon, with our own seeded RNG.

    Deterministic for a given seed. Channel subsets: 2**U(0, log2(min(C, 9) + 1)) channels, rounded down,
    drawn without replacement; each (dilation, kernel) pair fits its biases on one uniformly drawn example.
    """
    if num_features < NUM_KERNELS:
        raise EnECGError(f"MiniRocket num_features must be at least {NUM_KERNELS} (one per kernel), got {num_features}")
    rng = np.random.default_rng(seed)
    records, channels, samples = signals.shape
    dilations, counts = fit_dilations(samples, num_features, max_dilations_per_kernel)
    pairs = len(dilations) * NUM_KERNELS
    sizes = (2 ** rng.uniform(0, np.log2(min(channels, MAX_CHANNELS_PER_KERNEL) + 1), pairs)).astype(np.int64)
    mask = torch.zeros(pairs, channels, dtype=torch.bool)
    for pair, size in enumerate(sizes):
        mask[pair, torch.from_numpy(rng.choice(channels, size, replace=False))] = True
    mask = mask.view(len(dilations), NUM_KERNELS, channels)
    examples = torch.from_numpy(rng.integers(records, size=(len(dilations), NUM_KERNELS)))
    return {
        "biases": fit_biases(torch.from_numpy(signals), dilations, counts, mask, examples),
        "channel_mask": mask,
        "dilations": torch.tensor(dilations),
        "num_features_per_dilation": torch.tensor(counts),
        "samples": samples,
    }


@register_pretrainer("minirocket")
def pretrain(signals: np.ndarray, out: Path, settings: dict, seed: int) -> dict:
    """Fit on at most `max_fit_records` (default 2048) seeded-random finite records; save atomically.

    The records are cut into `spec.samples` windows first (a 10 s corpus record is exactly one window), so
    the fit sees what `forward` sees. settings: num_features (default 9996), max_dilations_per_kernel (32).
    """
    signals = np.asarray(signals, dtype=np.float32)
    finite = np.flatnonzero(np.isfinite(signals).all(axis=(1, 2)))
    if len(finite) == 0:
        raise EnECGError(f"MiniRocket pretrain: none of the {len(signals)} records given is finite")
    limit = int(settings.get("max_fit_records", 2048))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(finite, limit, replace=False)) if len(finite) > limit else finite
    segments = windows(torch.from_numpy(signals[chosen]), CONFIG.spec.samples).flatten(0, 1)
    checkpoint = fit(
        segments.numpy(),
        num_features=int(settings.get("num_features", CONFIG.embedding_dim)),
        max_dilations_per_kernel=int(settings.get("max_dilations_per_kernel", 32)),
        seed=seed,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save(checkpoint, partial)
    os.replace(partial, out)
    return {
        "fit_records": len(chosen),
        "non_finite_records": len(signals) - len(finite),
        "num_features": int(checkpoint["biases"].numel()),
        "dilations": checkpoint["dilations"].tolist(),
    }


@register_backbone(CONFIG)
def build(path: Path) -> MiniRocket:
    """Load fitted parameters (weights_only=True) and check they fit this backbone's 12 x 1000 input spec."""
    checkpoint = check_checkpoint(load_torch_file(path), path)
    channels, samples = checkpoint["channel_mask"].shape[-1], checkpoint["samples"]
    if (channels, samples) != (len(CONFIG.spec.leads), CONFIG.spec.samples):
        raise CheckpointError(
            f"MiniRocket checkpoint {path} was fitted on {channels} leads x {samples} samples, but this backbone "
            f"takes {len(CONFIG.spec.leads)} x {CONFIG.spec.samples}; {PRETRAIN_HINT}"
        )
    return MiniRocket(checkpoint)
