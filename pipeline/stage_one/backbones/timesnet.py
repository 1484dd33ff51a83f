"""TimesNet (Wu et al., 2023) as EnECG uses it: a next-sample forecaster of one ECG lead at 50 Hz.

TimesNet normalises a series (mean, std), embeds it (a circular conv over the values plus sinusoidal
positions), stretches it from 500 to 501 steps (`predict_linear`), then runs TimesBlocks: each finds the
top-k periods of its input by FFT, folds the sequence into a [rows, period] grid per period, applies 2D
inception convolutions, unfolds, and mixes the k results by softmaxed FFT amplitudes. A Linear projects
back to one value per step, de-normalised; the last step is the forecast, EnECG's feature.
EnECG's published configuration is the default (seq_len 500, pred_len 1, d_model 16, d_ff 32, 6 kernels,
top-3 periods, 3 layers, dropout 0.3, one input channel). A user's own EnECG-trained TimesNet of another
size loads too (see `forecasting`): seq_len and pred_len are read from `predict_linear.weight`
[seq_len + pred_len, seq_len], d_model from the value embedding's `tokenConv.weight` [d_model, 1, 3], d_ff
from the first Inception's kernel [d_ff, d_model, 1, 1], e_layers from the blocks `model.N.*` and
num_kernels from the kernels `...kernels.N.*` the state dict holds (every index up to the largest must be
there), the unused timeF input size and the position table's length from their tensors. `top_k`, which no
tensor determines, is `top_k` in checkpoint_config.json beside the checkpoint (default 3); dropout does
not act in eval mode.

Quirks of the reference kept on purpose (see the parity fixture's README):
- The period search casts the complex spectrum to float16, which keeps only its REAL part: periods are
  ranked by |Re rFFT| in float16 and weighted by the softmax, in float16, of those amplitudes.
- Periods are chosen from the spectrum averaged over the batch, so a series' output depends on the other
  series in its batch. `per_series_periods=True` lets every series choose its own, exactly as if it ran
  alone (EnECG's unbatched output), still batched: series that share a period are convolved together.
  The backbone always uses it, so an embedding never depends on batching; pretraining uses the
  reference's batch-wide choice, as the authors trained.
- EnECG calls the model with x_mark=None, which its DataEmbedding cannot take; we use the value and
  position embeddings only (what the reference gives with all-zero time marks). The timeF Linear
  `enc_embedding.temporal_embedding.embed` is therefore never used, but it is in the published state dict,
  so the model keeps it to load strictly, as it keeps the sinusoidal buffer `position_embedding.pe`.

As a backbone, each lead is one series (see `pipeline.stage_one.backbones.forecasting` for the input). The embedding holds,
per lead, the time mean of the final hidden state [d_model] ([B, d_model * leads], lead-major: [B, 192] at
the published size); the native output "forecast" [B, pred_len * leads] is EnECG's feature per lead. A
record longer than seq_len samples is split into seq_len-sample windows whose outputs are averaged. The
checkpoint format is the DLinear one: a bare state_dict saved by `torch.save` (assumed for the published
file, which the repository mirror lacks).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.stage_one.backbones import (
    LEADS_12,
    BackboneConfig,
    forecasting,
    windows,
)
from pipeline.stage_one.backbones.forecasting import SEQ_LEN

PRED_LEN = 1
D_MODEL = 16
D_FF = 32
NUM_KERNELS = 6
TOP_K = 3
E_LAYERS = 3
DROPOUT = 0.3
TIME_FEATURES = 4  # timeF with freq "h": the input size of the unused temporal embedding
MAX_POSITIONS = 5000
PRETRAIN_DEFAULTS = {"epochs": 3, "batch_size": 32, "lr": 1e-3, "max_shift": 10, "eval_windows": 1024, "device": "auto"}


class Inception(nn.Module):
    """`num_kernels` same-padded Conv2d with kernel sizes 1, 3, 5, ...; the reference averages their outputs.

    The mean of same-padded convolutions is one convolution with the mean of their kernels, each
    zero-padded to the largest size: one 11x11 convolution instead of six (121 instead of 286 taps per
    output, 2.4x less work), the same parameters, outputs within float32 rounding of the reference's.
    """

    def __init__(self, in_channels: int, out_channels: int, num_kernels: int):
        super().__init__()
        self.kernels = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 2 * i + 1, padding=i) for i in range(num_kernels)
        )
        for conv in self.kernels:  # the reference's initialisation, which pretraining starts from
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The one (weight, bias) equivalent to the mean of the convolutions, for padding `largest // 2`."""
        largest = self.kernels[-1].kernel_size[0]
        weight = torch.stack([F.pad(conv.weight, [(largest - conv.kernel_size[0]) // 2] * 4) for conv in self.kernels])
        return weight.mean(dim=0), torch.stack([conv.bias for conv in self.kernels]).mean(dim=0)


class TimesBlock(nn.Module):
    def __init__(self, d_model: int, d_ff: int, num_kernels: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.padding = num_kernels - 1
        self.conv = nn.Sequential(
            Inception(d_model, d_ff, num_kernels), nn.GELU(), Inception(d_ff, d_model, num_kernels)
        )

    def periods(self, x: torch.Tensor, per_series: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Periods [B, k] (int) and their mixing weights [B, k] (float16) from |Re rFFT| of x [B, T, N] in float16."""
        batch, length, _ = x.shape
        amplitude = torch.fft.rfft(x.float(), dim=1).real.half().abs()  # the reference's complex->half cast
        per_sample = amplitude.mean(dim=-1)  # [B, F]
        score = per_sample if per_series else amplitude.mean(dim=0).mean(dim=-1).expand(batch, -1)
        score = score.clone()
        score[:, 0] = 0  # never the constant component
        top = score.topk(self.top_k, dim=1).indices
        # a frequency of 0 is only picked when all scores are 0, where the reference divides by zero
        return length // top.clamp(min=1), F.softmax(per_sample.gather(1, top), dim=1)

    def forward(self, x: torch.Tensor, per_series: bool = False) -> torch.Tensor:
        periods, weights = self.periods(x, per_series)
        expand, activation, shrink = self.conv
        (weight_1, bias_1), (weight_2, bias_2) = expand.merged(), shrink.merged()  # once, not per period

        def fold_conv(x: torch.Tensor, period: int) -> torch.Tensor:
            """Zero-pad [B, T, N] to a multiple of `period`, fold to [B, N, rows, period], convolve, unfold, crop."""
            batch, length, channels = x.shape
            rows = -(-length // period)
            grid = F.pad(x, (0, 0, 0, rows * period - length)).reshape(batch, rows, period, channels)
            out = F.conv2d(grid.permute(0, 3, 1, 2), weight_1, bias_1, padding=self.padding)
            out = F.conv2d(activation(out), weight_2, bias_2, padding=self.padding)
            return out.permute(0, 2, 3, 1).reshape(batch, rows * period, channels)[:, :length]

        results = []
        for rank in range(self.top_k):
            out = torch.empty_like(x)
            for period in periods[:, rank].unique().tolist():  # one group per distinct period
                members = (periods[:, rank] == period).nonzero()[:, 0]
                out[members] = fold_conv(x[members], period)
            results.append(out)
        return (torch.stack(results, dim=-1) * weights[:, None, None, :]).sum(dim=-1) + x


class Positions(nn.Module):
    """The sinusoidal position table, a persistent buffer `pe` [1, max_len, d_model] as in the checkpoint."""

    def __init__(self, d_model: int, max_len: int = MAX_POSITIONS):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * frequency)
        pe[:, 1::2] = torch.cos(position * frequency)
        self.register_buffer("pe", pe[None])

    def forward(self, length: int) -> torch.Tensor:
        return self.pe[:, :length]


class Embedding(nn.Module):
    """EnECG's DataEmbedding without time marks: circular Conv1d(1 -> d_model, 3) of the values + positions."""

    def __init__(self, d_model: int, dropout: float, time_features: int = TIME_FEATURES, max_positions: int = MAX_POSITIONS):
        super().__init__()
        self.value_embedding = nn.ModuleDict(
            {"tokenConv": nn.Conv1d(1, d_model, 3, padding=1, padding_mode="circular", bias=False)}
        )
        nn.init.kaiming_normal_(self.value_embedding["tokenConv"].weight, mode="fan_in", nonlinearity="leaky_relu")
        self.position_embedding = Positions(d_model, max_positions)
        self.temporal_embedding = nn.ModuleDict({"embed": nn.Linear(time_features, d_model, bias=False)})  # unused
        self.dropout = nn.Dropout(dropout)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """[N, L] -> [N, L, d_model]."""
        values = self.value_embedding["tokenConv"](series[:, None, :]).transpose(1, 2)
        return self.dropout(values + self.position_embedding(series.shape[1]))


class TimesNet(nn.Module):
    """TimesNet forecaster over univariate series [N, seq_len]; module names are EnECG's."""

    def __init__(
        self,
        seq_len: int = SEQ_LEN,
        pred_len: int = PRED_LEN,
        d_model: int = D_MODEL,
        d_ff: int = D_FF,
        num_kernels: int = NUM_KERNELS,
        top_k: int = TOP_K,
        e_layers: int = E_LAYERS,
        dropout: float = DROPOUT,
        time_features: int = TIME_FEATURES,
        max_positions: int = MAX_POSITIONS,
    ):
        super().__init__()
        self.seq_len, self.pred_len = seq_len, pred_len
        self.model = nn.ModuleList(TimesBlock(d_model, d_ff, num_kernels, top_k) for _ in range(e_layers))
        self.enc_embedding = Embedding(d_model, dropout, time_features, max_positions)
        self.layer_norm = nn.LayerNorm(d_model)  # one LayerNorm, shared by every block
        self.predict_linear = nn.Linear(seq_len, seq_len + pred_len)
        self.projection = nn.Linear(d_model, 1)

    def forward(self, series: torch.Tensor, per_series_periods: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(forecast [N, pred_len], final hidden state [N, seq_len + pred_len, d_model]) of series [N, seq_len]."""
        means = series.mean(dim=1, keepdim=True).detach()
        centred = series - means
        stdev = torch.sqrt(torch.var(centred, dim=1, keepdim=True, unbiased=False) + 1e-5)
        hidden = self.enc_embedding(centred / stdev)
        hidden = self.predict_linear(hidden.transpose(1, 2)).transpose(1, 2)
        for block in self.model:
            hidden = self.layer_norm(block(hidden, per_series_periods))
        out = self.projection(hidden)[..., 0] * stdev + means
        return out[:, -self.pred_len :], hidden

    def next_sample(self, series: torch.Tensor) -> torch.Tensor:
        return self(series)[0][:, 0]


CONFIG = BackboneConfig(
    name="timesnet",
    spec=forecasting.INPUT_SPEC,
    embedding_dim=D_MODEL * len(LEADS_12),
    checkpoint_file="checkpoint.pth",
    source="EnECG release checkpoints/TimesNet/checkpoint.pth, or `enecg pretrain --model timesnet`",
    pretrainable=True,
    native_outputs=("forecast",),
    trained_on=("mimic-iv-ecg",),
    trained_on_source=(
        "EnECG's authors (yuhaoxu99/EnECG README.md; Xu et al., arXiv 2511.22935): MIMIC-IV-ECG, the one corpus "
        "they prepare, for the release checkpoints/TimesNet/checkpoint.pth; a checkpoint made by `enecg pretrain "
        "--model timesnet` saw only this corpus's own training records, without labels"
    ),
)


def _indices(state: dict, pattern: str, label: str, path: Path) -> int | None:
    """How many of the numbered modules `pattern` (a regex whose group is the index N) the state dict holds: the
    largest N + 1. When some N below it has no key at all, the checkpoint is refused with the keys that N
    would have (those of the other indices), as load_state_dict_strict lists them, before any model is built."""
    matches = [(key, match) for key in state if (match := re.match(pattern, key))]
    found = {int(match[1]) for _, match in matches}
    if not found:
        return None
    count = max(found) + 1
    absent = [index for index in range(count) if index not in found]
    if absent:
        missing = sorted({key[: match.start(1)] + str(index) + key[match.end(1) :] for key, match in matches for index in absent})
        listed = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise CheckpointError(
            f"checkpoint {path} does not match TimesNet:\n  missing keys ({len(missing)}): {listed}\n"
            f"  (it holds keys {label} up to N = {count - 1}, none for N = {', '.join(map(str, absent[:20]))})"
        )
    return count


def sizes(state: dict, path: Path) -> dict[str, forecasting.Size]:
    """Every TimesNet size that a state dict's shapes and keys determine (see the module docstring)."""
    size_from = forecasting.size_from
    blocks = _indices(state, r"model\.(\d+)\.", "model.N.*", path)
    kernels = _indices(state, r"model\.\d+\.conv\.[02]\.kernels\.(\d+)\.", "model.*.conv.*.kernels.N.*", path)
    first = [f"model.{block}.conv.0.kernels.{kernel}.weight" for block in range(blocks or 0) for kernel in range(kernels or 0)]
    return {
        "seq_len": size_from(state, [("predict_linear.weight", lambda shape: shape[1])], SEQ_LEN),
        "pred_len": size_from(state, [("predict_linear.weight", lambda shape: shape[0] - shape[1])], PRED_LEN),
        "d_model": size_from(
            state,
            [
                ("enc_embedding.value_embedding.tokenConv.weight", lambda shape: shape[0]),
                ("layer_norm.weight", lambda shape: shape[0]),
                ("projection.weight", lambda shape: shape[1]),
            ],
            D_MODEL,
        ),
        "d_ff": size_from(state, [(key, lambda shape: shape[0]) for key in first], D_FF),
        "e_layers": forecasting.Size(blocks, f"keys model.0-{blocks - 1}.*") if blocks else forecasting.Size(E_LAYERS),
        "num_kernels": (
            forecasting.Size(kernels, f"keys model.*.conv.*.kernels.0-{kernels - 1}.*") if kernels else forecasting.Size(NUM_KERNELS)
        ),
        "time_features": size_from(state, [("enc_embedding.temporal_embedding.embed.weight", lambda shape: shape[1])], TIME_FEATURES),
        "max_positions": size_from(state, [("enc_embedding.position_embedding.pe", lambda shape: shape[1])], MAX_POSITIONS),
    }


def _settings(found: dict[str, forecasting.Size], settings: dict, where: str, path: Path) -> dict:
    """`top_k`, which no tensor determines, from the checkpoint config; and the sizes' own consistency."""
    d_model, seq_len, pred_len = found["d_model"], found["seq_len"].value, found["pred_len"].value
    if d_model.value % 2:
        raise CheckpointError(f"checkpoint {path}: {d_model.describe('d_model')} is odd; TimesNet's position table needs an even d_model")
    if found["max_positions"].value < seq_len:
        raise CheckpointError(f"checkpoint {path}: {found['max_positions'].describe('the position table')} is shorter than seq_len {seq_len}")
    frequencies = (seq_len + pred_len) // 2  # rFFT bins of the blocks' series, the constant one left out
    top_k = forecasting.setting(
        settings, where, "top_k", TOP_K, forecasting.whole(1, frequencies),
        f"a whole number of periods from 1 to {frequencies} (the non-constant frequencies of {seq_len + pred_len} steps)",
    )
    return {"top_k": top_k}


class TimesNetBackbone(forecasting.ForecasterBackbone):
    """TimesNet at a checkpoint's size: every size its tensors and keys determine (`sizes`), `top_k` (default 3)
    and `sampling_rate` (default seq_len / 10 s) from its checkpoint config."""

    config = CONFIG
    net_class = TimesNet
    read_sizes = staticmethod(sizes)
    read_settings = staticmethod(_settings)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, leads, _ = x.shape
        length = self.net.seq_len
        forecast, hidden = self.net(windows(x, length).reshape(-1, length), per_series_periods=True)
        embedding = hidden.mean(dim=1).reshape(batch, -1, leads, hidden.shape[-1]).mean(dim=1)
        return {
            "embedding": embedding.reshape(batch, -1),
            "forecast": forecast.reshape(batch, -1, leads, forecast.shape[-1]).mean(dim=1).reshape(batch, -1),
        }

    @staticmethod
    def lead_features(settings: dict) -> int:
        return settings["d_model"]  # the mean final hidden state of the lead's series


# build(checkpoint, config=None): the backbone at the checkpoint's size, `config` (EnECG Configs attributes)
# replacing checkpoint_config.json; pretrain(signals, out, settings, seed): next-sample forecasting on the corpus
# (see `pipeline.stage_one.backbones.forecasting.pretrain`), defaults in PRETRAIN_DEFAULTS
build, pretrain = forecasting.register(TimesNetBackbone, PRETRAIN_DEFAULTS)


def parity_outputs(fixture_dir: Path) -> dict[str, np.ndarray]:
    """EnECG's forward [B, pred_len, c_out] and `inference_timesnet` features, batched and one series at a time."""
    net = TimesNetBackbone.load_net(fixture_dir / "checkpoint.pth")[0].eval()
    x = torch.from_numpy(np.load(fixture_dir / "input.npy"))  # [B, L, 1]: one lead
    series = x[..., 0]
    with torch.no_grad():
        batched, _ = net(series)
        alone, _ = net(series, per_series_periods=True)
    return {
        "expected_forward": batched[..., None].numpy(),
        "expected_features": batched.mean(dim=1, keepdim=True).numpy(),
        "expected_features_unbatched": alone.mean(dim=1, keepdim=True).numpy(),
    }
