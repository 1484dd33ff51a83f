"""DLinear (Zeng et al., 2023) as EnECG uses it: a next-sample forecaster of one ECG lead at 50 Hz.

The model splits a 500-sample series into a trend (a moving average) and a seasonal rest (series - trend)
and maps each with one Linear(500 -> 1); their sum forecasts the next sample, which is EnECG's feature.
EnECG's published configuration is the default: seq_len 500, pred_len 1, moving-average kernel 1001,
`individual=False` (one pair of Linears shared by every channel, hence channel-independent). The kernel is
LONGER than the series: the average pads 500 copies of the first and of the last value on each side, so
every trend value averages the whole series plus edge copies.

The checkpoint is EnECG's `checkpoints/DLinear/checkpoint.pth`: a bare state_dict (4 keys) saved by
`torch.save`, with storages tagged cuda:0 (loaded onto the CPU); `enecg pretrain --model dlinear` writes
the same format (see `pipeline.stage_one.backbones.forecasting`). A user's own EnECG-trained DLinear of
another size loads too: seq_len and pred_len are read from `Linear_Seasonal.weight` [pred_len, seq_len];
the kernel, which no tensor determines, is `kernel_size` in checkpoint_config.json beside the checkpoint
(an odd number; default 1001), and the series are a 10 s record resampled to seq_len samples unless its
`sampling_rate` says otherwise (see `forecasting`).

As a backbone, each lead of the record is one series (see `pipeline.stage_one.backbones.forecasting` for the input): the
embedding holds, per lead, the seasonal and the trend Linear outputs ([B, 2 * pred_len * leads], lead-major,
seasonal then trend), and the native output "forecast" [B, pred_len * leads] is their sum, EnECG's feature
for that lead ([B, 24] and [B, 12] at the published size). A record longer than seq_len samples is split
into seq_len-sample windows whose outputs are averaged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.stage_one.backbones import (
    LEADS_12,
    BackboneConfig,
    forecasting,
    windows,
)
from pipeline.stage_one.backbones.forecasting import SEQ_LEN

PRED_LEN = 1
KERNEL_SIZE = 1001
PRETRAIN_DEFAULTS = {
    "epochs": 10, "batch_size": 256, "lr": 1e-3, "max_shift": 50, "eval_windows": 4096, "device": "auto"
}


class DLinear(nn.Module):
    """Decomposition + two Linears over univariate series [N, seq_len]; parameter names are EnECG's."""

    def __init__(self, seq_len: int = SEQ_LEN, pred_len: int = PRED_LEN, kernel_size: int = KERNEL_SIZE):
        super().__init__()
        self.seq_len, self.pred_len, self.kernel_size = seq_len, pred_len, kernel_size
        self.Linear_Seasonal = nn.Linear(seq_len, pred_len)
        self.Linear_Trend = nn.Linear(seq_len, pred_len)

    def decompose(self, series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(seasonal, trend) of [N, L]: the trend is a stride-1 moving average over the edge-padded series.

        EnECG averages with AvgPool1d(1001), ~150x slower on a CPU than these differences of a float64
        cumulative sum, and less exact (float32 sums of 1001 terms): our trend is within 4e-7 of the
        exact average, the reference's within 2e-5; the forecasts agree to 2e-6 on the parity fixture.
        """
        half = (self.kernel_size - 1) // 2
        padded = F.pad(series[:, None, :], (half, half), mode="replicate")[:, 0, :]
        sums = F.pad(padded.double().cumsum(dim=-1), (1, 0))
        trend = ((sums[:, self.kernel_size :] - sums[:, : -self.kernel_size]) / self.kernel_size).to(series.dtype)
        return series - trend, trend

    def forward(self, series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The seasonal and the trend parts of the forecast, each [N, pred_len]; the forecast is their sum."""
        seasonal, trend = self.decompose(series)
        return self.Linear_Seasonal(seasonal), self.Linear_Trend(trend)

    def next_sample(self, series: torch.Tensor) -> torch.Tensor:
        seasonal, trend = self(series)
        return (seasonal + trend)[:, 0]


CONFIG = BackboneConfig(
    name="dlinear",
    spec=forecasting.INPUT_SPEC,
    embedding_dim=2 * len(LEADS_12),
    checkpoint_file="checkpoint.pth",
    source="EnECG release checkpoints/DLinear/checkpoint.pth, or `enecg pretrain --model dlinear`",
    pretrainable=True,
    native_outputs=("forecast",),
    trained_on=("mimic-iv-ecg",),
    trained_on_source=(
        "EnECG's authors (yuhaoxu99/EnECG README.md; Xu et al., arXiv 2511.22935): MIMIC-IV-ECG, the one corpus "
        "they prepare, for the release checkpoints/DLinear/checkpoint.pth; a checkpoint made by `enecg pretrain "
        "--model dlinear` saw only this corpus's own training records, without labels"
    ),
)


def sizes(state: dict, path: Path | None = None) -> dict[str, forecasting.Size]:
    """seq_len and pred_len of a DLinear state_dict, from Linear_Seasonal.weight [pred_len, seq_len] (else Trend's)."""
    keys = ("Linear_Seasonal.weight", "Linear_Trend.weight")
    return {
        "seq_len": forecasting.size_from(state, [(key, lambda shape: shape[1]) for key in keys], SEQ_LEN),
        "pred_len": forecasting.size_from(state, [(key, lambda shape: shape[0]) for key in keys], PRED_LEN),
    }


def _kernel(found: dict[str, forecasting.Size], settings: dict, where: str, path: Path) -> dict:
    """The moving-average kernel, which no tensor determines: `kernel_size` of the checkpoint config."""
    kernel = forecasting.setting(
        settings, where, "kernel_size", KERNEL_SIZE, lambda k: isinstance(k, int) and k >= 1 and k % 2 == 1,
        "an odd whole number (the moving-average kernel)",
    )
    return {"kernel_size": kernel}


class DLinearBackbone(forecasting.ForecasterBackbone):
    """DLinear at a checkpoint's size: seq_len and pred_len from its tensors (`sizes`), `kernel_size` (default
    1001) and `sampling_rate` (default seq_len / 10 s) from its checkpoint config."""

    config = CONFIG
    net_class = DLinear
    read_sizes = staticmethod(sizes)
    read_settings = staticmethod(_kernel)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, leads, _ = x.shape
        length, steps = self.net.seq_len, self.net.pred_len
        seasonal, trend = self.net(windows(x, length).reshape(-1, length))  # [B * W * leads, pred_len] each
        parts = torch.stack([seasonal, trend], dim=1).reshape(batch, -1, leads, 2, steps).mean(dim=1)
        return {"embedding": parts.reshape(batch, -1), "forecast": parts.sum(dim=2).reshape(batch, -1)}

    @staticmethod
    def lead_features(settings: dict) -> int:
        return 2 * settings["pred_len"]  # the seasonal and the trend output of each forecast step


# build(checkpoint, config=None): the backbone at the checkpoint's size, `config` (EnECG Configs attributes)
# replacing checkpoint_config.json; pretrain(signals, out, settings, seed): next-sample forecasting on the corpus
# (see `pipeline.stage_one.backbones.forecasting.pretrain`), defaults in PRETRAIN_DEFAULTS
build, pretrain = forecasting.register(DLinearBackbone, PRETRAIN_DEFAULTS)


def parity_outputs(fixture_dir: Path) -> dict[str, np.ndarray]:
    """EnECG's `model(x, 0)` [B, pred_len, C] and `inference_dlinear` features on the fixture's [B, L, C] input."""
    net = DLinearBackbone.load_net(fixture_dir / "checkpoint.pth")[0].eval()
    x = torch.from_numpy(np.load(fixture_dir / "input.npy"))
    batch, length, channels = x.shape
    with torch.no_grad():
        seasonal, trend = net(x.permute(0, 2, 1).reshape(batch * channels, length))
    out = (seasonal + trend).reshape(batch, channels, -1).permute(0, 2, 1)
    return {"expected_forward": out.numpy(), "expected_features": out.reshape(batch, -1).numpy()}
