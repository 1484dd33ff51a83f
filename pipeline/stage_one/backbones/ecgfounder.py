"""ECGFounder (Li et al., NEJM AI 2025): the Net1D RegNet-style 1-D CNN, 12-lead and lead-I variants.

Native PyTorch port of `net1d.py` from PKUDigitalHealth/ECGFounder that loads the released
`12_lead_ECGFounder.pth` / `1_lead_ECGFounder.pth` files as they are. The published configuration is
7 stages of bottleneck blocks (filters 64-160-160-400-400-1024-1024, blocks 2-2-2-3-3-4-4, kernel 16,
stride 2, grouped convolutions 16 channels wide, squeeze-and-excitation, Swish), BatchNorm and dropout
switched off, and a 150-label linear head. The embedding is the 1024-d time-mean of the last stage; the
150 label logits are kept as the native output "logits". Both files were trained, with their labels, on the
Harvard-Emory ECG Database (`trained_on`), not on any PhysioNet corpus.

Things that look odd here are the reference's behaviour, reproduced on purpose:
- convolutions pad "SAME" TensorFlow-style, computed from the input length on every call;
- the shortcut of a downsampling block max-pools after padding with ZEROS, so an odd-length input's last
  window is max(x_last, 0);
- a wider block pads its shortcut with zero channels, half before and the rest after;
- the checkpoint carries every BatchNorm of the training graph although `use_bn=False` never applies
  them; the loader demands them by name and shape and then drops them (see `Net1D.unused_keys`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import butter, filtfilt, iirnotch, medfilt
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.stage_one.backbones import (
    LEADS_12,
    Backbone,
    BackboneConfig,
    InputSpec,
    load_state_dict_strict,
    load_torch_file,
    register_backbone,
    windows,
)

MAINS_HZ = 50.0
"""The reference notches 50 Hz whatever the recording's origin (its training data, HEEDB, is American);
we keep that so inputs look like what the weights were trained on. 60 Hz mains is still cut to about 3 %
of its amplitude by the forward-backward 40 Hz low-pass edge."""

FOUNDER_TRAINED_ON = (
    "Li et al., NEJM AI 2025 (arXiv 2410.04133; PKUDigitalHealth/ECGFounder): built on 10,771,552 ECGs of "
    "1,818,247 subjects with 150 label categories from the Harvard-Emory ECG Database (supervised)"
)


@dataclass(frozen=True)
class Net1DShape:
    """The constructor arguments of Net1D that change tensor shapes (stride is not visible in weights)."""

    in_channels: int
    base_filters: int
    filters: tuple[int, ...]
    blocks: tuple[int, ...]
    n_classes: int
    kernel_size: int = 16
    stride: int = 2
    groups_width: int = 16

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], source: Path | str) -> Net1DShape:
        """Read the widths and depths off the weights, so the released model and a reduced one load alike.

        Stages and blocks are counted from the `stage_list.S.block_list.B.` key names; a hole in that
        numbering is then reported by the strict load as missing keys.
        """

        def shape(key: str) -> tuple[int, ...]:
            if key not in state_dict:
                raise CheckpointError(
                    f"checkpoint {source} is not an ECGFounder Net1D state_dict: missing key {key}; "
                    "use the published 12_lead_ECGFounder.pth or 1_lead_ECGFounder.pth"
                )
            return tuple(state_dict[key].shape)

        groups_width = shape("stage_list.0.block_list.0.conv2.conv.weight")[1]
        depth: dict[int, int] = {}
        for key in state_dict:
            if match := re.match(r"stage_list\.(\d+)\.block_list\.(\d+)\.", key):
                stage, block = int(match[1]), int(match[2])
                depth[stage] = max(depth.get(stage, 0), block + 1)
        stages = range(max(depth) + 1)
        base_filters, in_channels, kernel_size = shape("first_conv.conv.weight")
        return cls(
            in_channels=in_channels,
            base_filters=base_filters,
            filters=tuple(shape(f"stage_list.{s}.block_list.0.conv3.conv.weight")[0] for s in stages),
            blocks=tuple(depth.get(s, 0) for s in stages),
            n_classes=shape("dense.weight")[0],
            kernel_size=kernel_size,
            groups_width=groups_width,
        )


PUBLISHED_12_LEAD = Net1DShape(
    in_channels=12,
    base_filters=64,
    filters=(64, 160, 160, 400, 400, 1024, 1024),
    blocks=(2, 2, 2, 3, 3, 4, 4),
    n_classes=150,
)
PUBLISHED_1_LEAD = replace(PUBLISHED_12_LEAD, in_channels=1)


class SamePadConv(nn.Module):
    """Conv1d with TF "SAME" padding: output length ceil(L / stride), the odd pad sample on the right.

    The conv sits in `.conv` because that is where the checkpoint keys put it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length, (kernel,), (stride,) = x.shape[-1], self.conv.kernel_size, self.conv.stride
        pad = max(0, (-(-length // stride) - 1) * stride + kernel - length)
        return self.conv(F.pad(x, (pad // 2, pad - pad // 2)))


class Block(nn.Module):
    """Pre-activation bottleneck: 1x1 conv, grouped k-wide conv (strided when downsampling), 1x1 conv,
    squeeze-and-excitation (halving), plus a max-pooled, zero-channel-padded shortcut."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, preactivate: bool
    ):
        super().__init__()
        self.stride = stride
        self.preactivate = preactivate  # false only for the very first block, which follows first_conv's Swish
        self.conv1 = SamePadConv(in_channels, out_channels, 1)
        self.conv2 = SamePadConv(out_channels, out_channels, kernel_size, stride, groups)
        self.conv3 = SamePadConv(out_channels, out_channels, 1)
        self.se_fc1 = nn.Linear(out_channels, out_channels // 2)
        self.se_fc2 = nn.Linear(out_channels // 2, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.silu(x) if self.preactivate else x)
        out = self.conv2(F.silu(out))
        out = self.conv3(F.silu(out))
        excitation = torch.sigmoid(self.se_fc2(F.silu(self.se_fc1(out.mean(-1)))))
        out = out * excitation.unsqueeze(-1)

        shortcut = x
        if self.stride > 1:  # zero padding, not -inf: the reference's max-pool "SAME" pads with 0
            pad = self.stride - 1
            shortcut = F.max_pool1d(F.pad(shortcut, (pad // 2, pad - pad // 2)), self.stride)
        grow = out.shape[1] - shortcut.shape[1]
        if grow:
            shortcut = F.pad(shortcut, (0, 0, grow // 2, grow - grow // 2))
        return out + shortcut


class Stage(nn.Module):
    """Blocks of one width; the first one downsamples and widens. (`block_list` is the checkpoint's name.)"""

    def __init__(self, blocks: list[Block]):
        super().__init__()
        self.block_list = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block_list:
            x = block(x)
        return x


class Net1D(nn.Module):
    """The ECGFounder network with BatchNorm and dropout off (`use_bn=False, use_do=False`, as released).

    forward([B, C, L]) -> (features [B, filters[-1]], logits [B, n_classes]); any L works (the network is
    fully convolutional and mean-pools over time), the released weights saw L = 5000.
    """

    def __init__(self, shape: Net1DShape):
        super().__init__()
        self.shape = shape
        self.first_conv = SamePadConv(shape.in_channels, shape.base_filters, shape.kernel_size, stride=2)
        stages, width = [], shape.base_filters
        for index, (filters, count) in enumerate(zip(shape.filters, shape.blocks)):
            blocks = [
                Block(
                    width if b == 0 else filters,
                    filters,
                    shape.kernel_size,
                    stride=shape.stride if b == 0 else 1,
                    groups=filters // shape.groups_width,
                    preactivate=(index, b) != (0, 0),
                )
                for b in range(count)
            ]
            stages.append(Stage(blocks))
            width = filters
        self.stage_list = nn.ModuleList(stages)
        self.dense = nn.Linear(width, shape.n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.silu(self.first_conv(x))
        for stage in self.stage_list:
            out = stage(out)
        features = out.mean(-1)
        return features, self.dense(features)

    def unused_keys(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of the BatchNorm entries the released state_dict holds but forward never uses:
        `first_bn` and `bn1`/`bn2`/`bn3` of every block (bn1 has the block's input width)."""
        widths = {"first_bn": self.shape.base_filters}
        for s, stage in enumerate(self.stage_list):
            for b, block in enumerate(stage.block_list):
                prefix = f"stage_list.{s}.block_list.{b}"
                widths[f"{prefix}.bn1"] = block.conv1.conv.in_channels
                widths[f"{prefix}.bn2"] = widths[f"{prefix}.bn3"] = block.conv1.conv.out_channels
        unused = {}
        for name, width in widths.items():
            for tensor in ("weight", "bias", "running_mean", "running_var"):
                unused[f"{name}.{tensor}"] = (width,)
            unused[f"{name}.num_batches_tracked"] = ()
        return unused


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a released ECGFounder file, read with weights_only=True.

    The file is the training loop's `torch.save({'epoch', 'step', 'state_dict', 'optimizer', 'scheduler',
    'val_auroc'})`. Tensors, the Adam state and the ReduceLROnPlateau dict are all weights_only-safe;
    only `val_auroc`, a numpy float64 pickled under numpy 1.x's `numpy.core.multiarray.scalar`, is not.
    We allow exactly that scalar reconstructor (under its numpy-1 name, and its numpy-2 name for files
    re-saved since) plus `np.dtype` / `Float64DType`, which only rebuild a number from bytes: no code runs.
    """
    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor, wherever this numpy keeps it
    allowed = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.float64))]
    with torch.serialization.safe_globals(allowed):
        checkpoint = load_torch_file(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(
            f"checkpoint {path} has no 'state_dict' entry: expected the released ECGFounder .pth "
            "(a dict with epoch, step, state_dict, optimizer, scheduler, val_auroc)"
        )
    return checkpoint["state_dict"]


def load_net1d(path: Path) -> Net1D:
    """Build Net1D with the dims found in the checkpoint and load it strictly.

    The unused BatchNorm entries must all be present with their exact shapes (so a file from another
    architecture is not half-accepted) and are then set aside; every other key goes through
    `load_state_dict_strict`.
    """
    state_dict = read_checkpoint(path)
    net = Net1D(Net1DShape.from_state_dict(state_dict, path))
    unused = net.unused_keys()
    problems = [f"{key} (missing)" for key in unused if key not in state_dict] + [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs {shape}"
        for key, shape in unused.items()
        if key in state_dict and tuple(state_dict[key].shape) != shape
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not match Net1D: its unused BatchNorm entries are wrong "
            f"({len(problems)}): " + ", ".join(problems[:20]) + (" ..." if len(problems) > 20 else "")
            + "; check that the file is the published ECGFounder checkpoint"
        )
    load_state_dict_strict(net, {k: v for k, v in state_dict.items() if k not in unused}, path)
    return net


def _spec(leads: tuple[str, ...]) -> InputSpec:
    return InputSpec(
        sampling_rate=500.0,
        samples=5000,
        leads=leads,
        normalisation=(
            f"{MAINS_HZ:g} Hz notch (Q 30), 0.67-40 Hz order-4 Butterworth band-pass (both filtfilt), "
            "minus a 0.4 s (201-sample) median-filter baseline, then one z-score over the whole record"
        ),
    )


class ECGFounder(Backbone):
    """The 12-lead ECGFounder. Records are cut into 10 s windows (`windows`: a longer record is split and
    its tail dropped, a shorter one zero-padded); embeddings and logits are averaged over windows, which
    for the linear head equals the logits of the averaged embedding."""

    config = BackboneConfig(
        name="ecgfounder",
        spec=_spec(LEADS_12),
        embedding_dim=1024,
        checkpoint_file="12_lead_ECGFounder.pth",
        source="https://huggingface.co/PKUDigitalHealth/ECGFounder (12_lead_ECGFounder.pth)",
        native_outputs=("logits",),
        trained_on=("heedb",),
        trained_on_labels=("heedb",),
        trained_on_source=FOUNDER_TRAINED_ON,
    )

    def __init__(self, checkpoint: Path):
        super().__init__()
        self.net = load_net1d(checkpoint)
        leads = self.config.spec.leads
        if self.net.shape.in_channels != len(leads):
            raise CheckpointError(
                f"checkpoint {checkpoint} takes {self.net.shape.in_channels} leads but backbone "
                f"{self.config.name!r} feeds {len(leads)} ({', '.join(leads)}); use the matching "
                "ecgfounder / ecgfounder-1lead backbone for this file"
            )

    def preprocess(self, signals: np.ndarray) -> np.ndarray:
        """The reference `util.filter_bandpass` + `z_score_normalization` of dataset.py, per record.

        (The reference's PTB-XL 150-label evaluation script z-scores only; its README and training
        datasets apply the filters too, which is what the weights saw.) Filters run in float64 along time;
        the z-score pools all leads of one record, so relative lead amplitudes are kept.
        """
        rate = self.config.spec.sampling_rate
        x = np.asarray(signals, dtype=np.float64)
        x = filtfilt(*iirnotch(MAINS_HZ, 30.0, rate), x, axis=-1)
        x = filtfilt(*butter(4, [0.67, 40.0], btype="bandpass", fs=rate), x, axis=-1)
        kernel = int(0.4 * rate) + 1
        kernel += 1 - kernel % 2  # medfilt needs an odd kernel
        rows = x.reshape(-1, x.shape[-1])  # 1-D medfilt per lead is ~20x faster than one N-d call
        x = x - np.stack([medfilt(row, kernel) for row in rows]).reshape(x.shape)
        mean = x.mean(axis=(1, 2), keepdims=True)
        std = x.std(axis=(1, 2), keepdims=True)
        return ((x - mean) / (std + 1e-8)).astype(np.float32)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = x.shape[0]
        chunks = windows(x, self.config.spec.samples)
        features, logits = self.net(chunks.flatten(0, 1))
        return {
            "embedding": features.unflatten(0, (batch, -1)).mean(1),
            "logits": logits.unflatten(0, (batch, -1)).mean(1),
        }


class ECGFounder1Lead(ECGFounder):
    """The single-lead (lead I) ECGFounder, same network with a 1-channel first convolution."""

    config = BackboneConfig(
        name="ecgfounder-1lead",
        spec=_spec(("I",)),
        embedding_dim=1024,
        checkpoint_file="1_lead_ECGFounder.pth",
        source="https://huggingface.co/PKUDigitalHealth/ECGFounder (1_lead_ECGFounder.pth)",
        native_outputs=("logits",),
        trained_on=("heedb",),
        trained_on_labels=("heedb",),
        trained_on_source=FOUNDER_TRAINED_ON + "; this is the paper's single-lead variant",
    )


register_backbone(ECGFounder.config)(ECGFounder)
register_backbone(ECGFounder1Lead.config)(ECGFounder1Lead)


def parity_outputs(fixture_dir: Path) -> dict[str, np.ndarray]:
    """Raw Net1D outputs on a fixture's input (ecgfounder-12lead and ecgfounder-1lead): no preprocessing."""
    (checkpoint,) = Path(fixture_dir).glob("checkpoint*")
    net = load_net1d(checkpoint).eval()
    with torch.no_grad():
        features, logits = net(torch.from_numpy(np.load(Path(fixture_dir) / "input.npy")))
    return {"expected_features": features.numpy(), "expected_logits": logits.numpy()}
