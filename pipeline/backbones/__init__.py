"""The backbone registry.

One backbone is one module in this package: a `BackboneConfig` (name, input spec, embedding size, where its
checkpoint comes from) and a builder decorated with `@register_backbone(config)`. The builder takes the path
of the checkpoint file (or folder, for HF-format models) and returns a frozen `Backbone` module.

    @register_backbone(BackboneConfig(name="dlinear", spec=InputSpec(...), embedding_dim=24, ...))
    def dlinear(checkpoint: Path) -> Backbone: ...

`extract` hands every backbone the corpus signals already resampled to `spec.sampling_rate` and reduced to
`spec.leads` (float32, millivolts, [B, len(leads), seconds * rate]); `Backbone.preprocess` then applies the
model's own filtering and normalisation (numpy, on the loader side) and `Backbone.forward` returns a dict
with "embedding" [B, D] and any native outputs (e.g. "logits").
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from pipeline.errors import CheckpointError

LEADS_12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


@dataclass(frozen=True)
class InputSpec:
    """What a backbone is fed: the corpus record resampled to `sampling_rate`, restricted to `leads`.

    `samples` is the length of one model window; a longer record is split into windows by the backbone
    itself (see `windows`). `normalisation` documents the model's own preprocessing.
    """

    sampling_rate: float
    samples: int
    leads: tuple[str, ...] = LEADS_12
    normalisation: str = "none"

    def as_dict(self) -> dict:
        return {**asdict(self), "leads": list(self.leads)}


@dataclass(frozen=True)
class BackboneConfig:
    """Everything `enecg backbones` shows and `extract` needs to know about one backbone.

    `checkpoint_file` is the file (or folder) name looked up under `checkpoints/<name>/` unless params give a
    path; `source` says where the public checkpoint comes from, or which command makes it. `pretrainable`
    backbones are produced by `enecg pretrain --model NAME` on the corpus instead of downloaded.
    """

    name: str
    spec: InputSpec
    embedding_dim: int
    checkpoint_file: str
    source: str
    pretrainable: bool = False
    native_outputs: tuple[str, ...] = field(default=())


class Backbone(nn.Module):
    """A frozen feature extractor. Subclasses override `forward`, and `preprocess` when the model has one."""

    config: ClassVar[BackboneConfig]

    def preprocess(self, signals: np.ndarray) -> np.ndarray:
        """The model's own filtering/normalisation of [B, leads, T] float32 millivolts (default: none)."""
        return signals

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


Builder = Callable[[Path], Backbone]
Pretrainer = Callable[[np.ndarray, Path, dict, int], dict]
_REGISTRY: dict[str, tuple[BackboneConfig, Builder]] = {}
_PRETRAINERS: dict[str, Pretrainer] = {}


def register_backbone(config: BackboneConfig) -> Callable[[Builder], Builder]:
    """Class/function decorator that adds a backbone builder to the registry under `config.name`."""

    def decorator(build: Builder) -> Builder:
        if config.name in _REGISTRY:
            raise ValueError(f"backbone {config.name!r} is registered twice")
        _REGISTRY[config.name] = (config, build)
        return build

    return decorator


def register_pretrainer(name: str) -> Callable[[Pretrainer], Pretrainer]:
    """Decorator for the function that makes a `pretrainable` backbone's checkpoint from the corpus.

    It is called as `pretrain(signals, out, settings, seed) -> summary`: `signals` is [N, leads, T] float32
    millivolts at the backbone's `spec` (a subsample of the training records), `out` the checkpoint path
    to write (in the backbone's native checkpoint format), `settings` the backbone's `pretrain` params, and
    the returned dict a small JSON-able summary (losses, sizes) that the stage records.
    """

    def decorator(pretrain: Pretrainer) -> Pretrainer:
        _PRETRAINERS[name] = pretrain
        return pretrain

    return decorator


def get_pretrainer(name: str) -> Pretrainer:
    config = get_config(name)
    if not config.pretrainable:
        raise CheckpointError(f"backbone {name!r} is not pretrained by this project; get its checkpoint: {config.source}")
    return _PRETRAINERS[name]


def _import_all() -> None:
    """Import every module of this package once, so that their decorators have run."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def list_backbones() -> list[BackboneConfig]:
    _import_all()
    return [config for config, _ in sorted(_REGISTRY.values(), key=lambda entry: entry[0].name)]


def get_config(name: str) -> BackboneConfig:
    _import_all()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise CheckpointError(f"unknown backbone {name!r}; known backbones: {known}")
    return _REGISTRY[name][0]


def default_checkpoint(name: str, root: Path = Path("checkpoints")) -> Path:
    return root / name / get_config(name).checkpoint_file


def build_backbone(name: str, checkpoint: Path | None = None) -> Backbone:
    """Build a frozen backbone in eval mode from its checkpoint; refuse clearly when the file is missing."""
    config = get_config(name)
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint(name)
    if not path.exists():
        how = f"run `enecg pretrain --model {name}`" if config.pretrainable else f"download it: {config.source}"
        raise CheckpointError(f"backbone {name!r} needs its checkpoint at {path}, which does not exist; {how}")
    model = _REGISTRY[name][1](path)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def checkpoint_sha256(path: Path) -> str:
    """sha256 of a checkpoint file, or of every file in a checkpoint folder (sorted by relative path)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_torch_file(path: Path) -> object:
    """`torch.load` with weights_only=True onto the CPU (published files often carry cuda:0 storages)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad or unsafe file
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load every key with its exact shape, or refuse with the missing, unexpected and mismatched keys listed."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {source} does not match {type(module).__name__}:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        lines.append("  check that the file is the published checkpoint for this backbone and size")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state_dict, strict=True)


def windows(x: torch.Tensor, samples: int) -> torch.Tensor:
    """Split [B, C, T] into non-overlapping windows [B, W, C, samples]; a short record is zero-padded at the end.

    Records longer than a window are split and the last partial window is dropped when at least one full
    window exists (the backbones average window embeddings).
    """
    batch, channels, length = x.shape
    if length < samples:
        x = torch.nn.functional.pad(x, (0, samples - length))
        length = samples
    count = length // samples
    return x[..., : count * samples].reshape(batch, channels, count, samples).permute(0, 2, 1, 3)
