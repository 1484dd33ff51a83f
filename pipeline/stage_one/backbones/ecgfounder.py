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

For post-training (`enecg post-train`, pipeline/stage_two/post_train.py) Net1D has stochastic depth (drop
path on each block's residual branch, the identity in eval mode and at rate 0, so the released outputs are
unchanged), reduced sizes of the same architecture (`Net1DShape.scaled`), and `write_checkpoint`, which saves
a post-trained network in the released container so that this module, `enecg extract` and the reference code
all read it. Such a file carries an `enecg` entry (its input rate, task, target scaling) that the backbone
takes its input spec from; the released files have none and keep the published 500 Hz spec.
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

    def scaled(self, width: float, depth: float) -> Net1DShape:
        """The same architecture `width` times as wide and `depth` times as deep: every width rounded (half up) to
        a multiple of `groups_width` (grouped convolutions need it), every stage keeping at least one block."""

        def widen(filters: int) -> int:
            return max(1, int(filters * width / self.groups_width + 0.5)) * self.groups_width

        return replace(
            self,
            base_filters=widen(self.base_filters),
            filters=tuple(widen(f) for f in self.filters),
            blocks=tuple(max(1, int(b * depth + 0.5)) for b in self.blocks),
        )

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


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): in training, drop each sample's residual branch with probability
    `rate` and scale the kept ones by 1 / (1 - rate), so the expected output is unchanged; otherwise the identity."""
    if not training or rate == 0.0:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class Block(nn.Module):
    """Pre-activation bottleneck: 1x1 conv, grouped k-wide conv (strided when downsampling), 1x1 conv,
    squeeze-and-excitation (halving), plus a max-pooled, zero-channel-padded shortcut. `drop_rate` is the
    stochastic-depth rate of the residual branch (0: never dropped; not a parameter, so checkpoints are unchanged)."""

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
        self.drop_rate = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.silu(x) if self.preactivate else x)
        out = self.conv2(F.silu(out))
        out = self.conv3(F.silu(out))
        excitation = torch.sigmoid(self.se_fc2(F.silu(self.se_fc1(out.mean(-1)))))
        out = drop_path(out * excitation.unsqueeze(-1), self.drop_rate, self.training)

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
    fully convolutional and mean-pools over time), the released weights saw L = 5000. `stochastic_depth` is
    the drop-path rate of the deepest block (see `set_stochastic_depth`).
    """

    def __init__(self, shape: Net1DShape, stochastic_depth: float = 0.0):
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
        self.set_stochastic_depth(stochastic_depth)

    def set_stochastic_depth(self, rate: float) -> None:
        """Drop-path rates rising linearly with depth, from 0 at the first block to `rate` at the last (the
        schedule of Huang et al. 2016): the shallow blocks, which every later one builds on, are dropped least."""
        blocks = [block for stage in self.stage_list for block in stage.block_list]
        for index, block in enumerate(blocks):
            block.drop_rate = float(rate) * index / max(len(blocks) - 1, 1)

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


def read_container(path: Path) -> dict:
    """A released ECGFounder file as a whole, read with weights_only=True (`read_checkpoint`: its state_dict).

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
    return checkpoint


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a released ECGFounder file (see `read_container`)."""
    return read_container(path)["state_dict"]


def load_net1d(path: Path) -> Net1D:
    """Build Net1D with the dims found in the checkpoint and load it strictly (see `net1d_from_state_dict`)."""
    return net1d_from_state_dict(read_checkpoint(path), path)


def net1d_from_state_dict(state_dict: dict[str, torch.Tensor], path: Path | str) -> Net1D:
    """Net1D with the dims found in the state_dict, loaded strictly.

    The unused BatchNorm entries must all be present with their exact shapes (so a file from another
    architecture is not half-accepted) and are then set aside; every other key goes through
    `load_state_dict_strict`.
    """
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


def write_checkpoint(path: Path, net: Net1D, epoch: int, step: int, enecg: dict) -> Path:
    """Save `net` in the released container, {'epoch', 'step', 'state_dict', 'enecg'}, its state_dict holding the
    unused BatchNorm entries too (identity statistics) as the released files do, so that `load_net1d` and the
    reference's strict `load_state_dict` both accept it. `enecg` (plain numbers and strings) records what the
    weights were trained for; its `sampling_rate` sets the backbone's input spec (see `ECGFounder`). Written
    under a temporary name and renamed."""
    state = {key: value.detach().cpu().clone() for key, value in net.state_dict().items()}
    for key, size in net.unused_keys().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        else:
            state[key] = torch.ones(size) if key.endswith((".weight", ".running_var")) else torch.zeros(size)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save({"epoch": int(epoch), "step": int(step), "state_dict": state, "enecg": dict(enecg)}, temporary)
    temporary.replace(path)
    return path


def post_training_net(leads: int, n_classes: int, stochastic_depth: float, width: float = 1.0, depth: float = 1.0,
                      checkpoint: Path | None = None) -> Net1D:
    """The Net1D that `enecg post-train` starts from: the released weights of `checkpoint` (loaded strictly, its
    own size) with a fresh `n_classes` classifier, as the reference fine-tunes it; or, without a checkpoint, a
    random initialisation of the published shape scaled by `width` and `depth`. Either with drop-path rates
    rising linearly to `stochastic_depth`."""
    published = replace(PUBLISHED_12_LEAD, in_channels=leads, n_classes=n_classes)
    if checkpoint is None:
        return Net1D(published.scaled(width, depth), stochastic_depth)
    net = load_net1d(checkpoint)
    if net.shape.in_channels != leads:
        raise CheckpointError(f"checkpoint {checkpoint} takes {net.shape.in_channels} leads, post-training feeds {leads}: "
                              "use 12_lead_ECGFounder.pth for ecgfounder and 1_lead_ECGFounder.pth for ecgfounder-1lead")
    net.shape = replace(net.shape, n_classes=n_classes)
    net.dense = nn.Linear(net.dense.in_features, n_classes)
    net.set_stochastic_depth(stochastic_depth)
    return net


PUBLISHED_RATE = 500.0  # Hz; the released weights saw 10 s windows at this rate
WINDOW_SECONDS = 10


def _notched(rate: float) -> bool:
    """Whether the mains notch applies: only below the Nyquist frequency (at 100 Hz, PTB-XL's low-rate records,
    already low-passed, it does not)."""
    return MAINS_HZ < rate / 2


def _median_kernel(rate: float) -> int:
    kernel = int(0.4 * rate) + 1
    return kernel + 1 - kernel % 2  # medfilt needs an odd kernel


def preprocess(signals: np.ndarray, rate: float) -> np.ndarray:
    """The reference `util.filter_bandpass` + `z_score_normalization` of dataset.py, per record, at `rate`.

    (The reference's PTB-XL 150-label evaluation script z-scores only; its README and training datasets
    apply the filters too, which is what the weights saw.) Filters run in float64 along time; the z-score
    pools all leads of one record, so relative lead amplitudes are kept. The mains notch only where the rate
    allows it (`_notched`).
    """
    x = np.asarray(signals, dtype=np.float64)
    if _notched(rate):
        x = filtfilt(*iirnotch(MAINS_HZ, 30.0, rate), x, axis=-1)
    x = filtfilt(*butter(4, [0.67, 40.0], btype="bandpass", fs=rate), x, axis=-1)
    rows = x.reshape(-1, x.shape[-1])  # 1-D medfilt per lead is ~20x faster than one N-d call
    x = x - np.stack([medfilt(row, _median_kernel(rate)) for row in rows]).reshape(x.shape)
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = x.std(axis=(1, 2), keepdims=True)
    return ((x - mean) / (std + 1e-8)).astype(np.float32)


def input_spec(leads: tuple[str, ...], sampling_rate: float = PUBLISHED_RATE) -> InputSpec:
    """10 s windows of `leads` at `sampling_rate`, as `preprocess` prepares them (the published: 500 Hz)."""
    notch = f"{MAINS_HZ:g} Hz notch (Q 30), " if _notched(sampling_rate) else ""
    return InputSpec(
        sampling_rate=float(sampling_rate),
        samples=int(round(WINDOW_SECONDS * sampling_rate)),
        leads=leads,
        normalisation=(
            f"{notch}0.67-40 Hz order-4 Butterworth band-pass ({'both ' * bool(notch)}filtfilt), minus a 0.4 s "
            f"({_median_kernel(sampling_rate)}-sample) median-filter baseline, then one z-score over the whole record"
        ),
    )


class ECGFounder(Backbone):
    """The 12-lead ECGFounder. Records are cut into 10 s windows (`windows`: a longer record is split and
    its tail dropped, a shorter one zero-padded); embeddings and logits are averaged over windows, which
    for the linear head equals the logits of the averaged embedding."""

    config = BackboneConfig(
        name="ecgfounder",
        spec=input_spec(LEADS_12),
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
        container = read_container(checkpoint)
        self.net = net1d_from_state_dict(container["state_dict"], checkpoint)
        # A post-trained file (write_checkpoint) states its input rate and may be a reduced size: this instance's
        # config says so, so that `extract` feeds it what it was trained on and expects its embedding size.
        rate = float(container.get("enecg", {}).get("sampling_rate", PUBLISHED_RATE))
        self.config = replace(type(self).config, spec=input_spec(self.config.spec.leads, rate), embedding_dim=self.net.shape.filters[-1])
        leads = self.config.spec.leads
        if self.net.shape.in_channels != len(leads):
            raise CheckpointError(
                f"checkpoint {checkpoint} takes {self.net.shape.in_channels} leads but backbone "
                f"{self.config.name!r} feeds {len(leads)} ({', '.join(leads)}); use the matching "
                "ecgfounder / ecgfounder-1lead backbone for this file"
            )

    def preprocess(self, signals: np.ndarray) -> np.ndarray:
        """See the module-level `preprocess`, at this instance's input rate."""
        return preprocess(signals, self.config.spec.sampling_rate)

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
        spec=input_spec(("I",)),
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
