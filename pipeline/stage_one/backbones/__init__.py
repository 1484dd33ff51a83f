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

What a published checkpoint has already seen: each config records the corpora its weights were trained on
(`trained_on`, canonical lower-case ids from `CORPORA`), those whose labels were used (`trained_on_labels`),
and where its authors say so (`trained_on_source`), or "not stated". `COMPOSITE_CORPORA` maps a corpus made
of others (the PhysioNet/CinC challenges) to its parts; `corpora_seen(name)` expands them, and
`seen_corpus_warning(name, corpus)` is the one-line warning for a test corpus that may be training data.
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

from pipeline.ecg import LEADS_12  # noqa: F401  (re-exported: every backbone module takes it from here)
from pipeline.errors import CheckpointError


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

    `trained_on` lists the corpora (ids of `CORPORA`; composites are expanded by `corpora_seen`) that the
    published weights were trained on, as their authors state; `trained_on_labels` the subset whose labels
    were used too (supervised pretraining or fine-tuning); `trained_on_source` cites where the authors say
    so (repository/file or paper), or says "not stated" and what they do say, with `trained_on` left empty.
    A checkpoint `enecg pretrain` makes saw only this corpus's own training records, without labels.
    """

    name: str
    spec: InputSpec
    embedding_dim: int
    checkpoint_file: str
    source: str
    pretrainable: bool = False
    native_outputs: tuple[str, ...] = field(default=())
    trained_on: tuple[str, ...] = field(default=())
    trained_on_labels: tuple[str, ...] = field(default=())
    trained_on_source: str = ""


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


# Canonical ids of the corpora a checkpoint may have been trained on (what `trained_on` and a params
# `data.corpus` name), with what each is.
CORPORA: dict[str, str] = {
    "mimic-iv-ecg": "MIMIC-IV-ECG: Module of Electrocardiogram Matched Subset (PhysioNet)",
    "physionet-2021": "PhysioNet/CinC Challenge 2021 training set (challenge-2021 v1.0.3)",
    "physionet-2020": "PhysioNet/CinC Challenge 2020 training set (challenge-2020)",
    "cpsc-2018": "China Physiological Signal Challenge 2018 (CPSC)",
    "cpsc-2018-extra": "China 12-Lead ECG Challenge Database, CPSC 2018 data not used there (CPSC-Extra)",
    "incart": "St Petersburg INCART 12-lead Arrhythmia Database",
    "ptb": "PTB Diagnostic ECG Database",
    "ptb-xl": "PTB-XL",
    "georgia": "Georgia 12-lead ECG Challenge Database",
    "chapman-shaoxing": "Chapman University / Shaoxing People's Hospital 12-lead ECG database",
    "ningbo": "Ningbo First Hospital 12-lead ECG database",
    "code-15": "CODE-15% (Ribeiro et al.)",
    "heedb": "Harvard-Emory ECG Database (HEEDB)",
    "time-series-pile": "MOMENT's Time-series Pile (AutonLab/Timeseries-PILE)",
    "informer-long-horizon": "Informer long-horizon forecasting datasets (Zhou et al., 2021)",
    "monash": "Monash time series forecasting archive",
    "ucr-uea": "UCR/UEA time series classification archive",
    "tsb-uad": "TSB-UAD anomaly detection benchmark",
    "ett": "Electricity Transformer Temperature (ETDataset: ETTh1, ETTh2, ETTm1, ETTm2)",
    "electricity": "Electricity load (ECL)",
    "traffic": "Traffic (PeMS road occupancy)",
    "weather": "Weather",
    "ili": "Influenza-like illness (CDC)",
    "exchange-rate": "Exchange rates",
}

# A corpus made of others -> its parts, as the corpus's own description lists them (`corpora_seen` expands
# them recursively). PhysioNet 2021's training set holds every public training set of 2020 and adds two.
COMPOSITE_CORPORA: dict[str, tuple[str, ...]] = {
    "physionet-2021": (
        "cpsc-2018", "cpsc-2018-extra", "incart", "ptb", "ptb-xl", "georgia", "chapman-shaoxing", "ningbo",
    ),
    "physionet-2020": ("cpsc-2018", "cpsc-2018-extra", "incart", "ptb", "ptb-xl", "georgia"),
    "time-series-pile": ("informer-long-horizon", "monash", "ucr-uea", "tsb-uad"),
    "informer-long-horizon": ("ett", "electricity", "traffic", "weather", "ili", "exchange-rate"),
}
COMPOSITE_CORPORA_SOURCE: dict[str, str] = {
    "physionet-2021": (
        "PhysioNet challenge-2021 v1.0.3 (Reyna et al., CinC 2021): training/ holds cpsc_2018, cpsc_2018_extra, "
        "st_petersburg_incart, ptb, ptb-xl, georgia, chapman_shaoxing, ningbo"
    ),
    "physionet-2020": (
        "Perez Alday et al., Physiol. Meas. 2020 (PhysioNet challenge-2020): training sets CPSC, CPSC-Extra, "
        "INCART, PTB, PTB-XL, Georgia (its undisclosed US set was test data only)"
    ),
    "time-series-pile": "huggingface.co/datasets/AutonLab/Timeseries-PILE card: the four repositories it names",
    "informer-long-horizon": "huggingface.co/datasets/AutonLab/Timeseries-PILE card (Zhou et al., 2021)",
}


def corpus_id(corpus: str) -> str:
    """A corpus name as its canonical id: lower case, `_` and spaces as `-` ("PTB_XL" -> "ptb-xl")."""
    return "-".join(str(corpus).strip().lower().replace("_", " ").split())


def expand_corpora(corpora) -> set[str]:
    """The given corpus ids with every composite's parts added, recursively."""
    seen: set[str] = set()
    todo = [corpus_id(corpus) for corpus in corpora]
    while todo:
        corpus = todo.pop()
        if corpus not in seen:
            seen.add(corpus)
            todo.extend(COMPOSITE_CORPORA.get(corpus, ()))
    return seen


def corpora_seen(name: str) -> set[str]:
    """Every corpus backbone `name`'s published weights were trained on, composites expanded (empty: not stated)."""
    return expand_corpora(get_config(name).trained_on)


def made_by_pretrain(name: str, checkpoint: Path) -> bool:
    """Whether `checkpoint` was made from the corpus by `enecg pretrain` (stages/pretrain.py writes pretrain.json
    beside it) rather than downloaded: then it saw only the corpus's training records, without labels."""
    return get_config(name).pretrainable and (Path(checkpoint).parent / "pretrain.json").exists()


def seen_corpus_warning(name: str, corpus: str | None, checkpoint: Path | None = None) -> str | None:
    """One line saying that backbone `name`'s checkpoint was trained on (part of) test corpus `corpus`, or None.

    None when `corpus` is None or shares nothing with the corpora the checkpoint's authors state; an empty
    `trained_on` ("not stated") gives None too, which is no evidence that the corpus was unseen. Given the
    `checkpoint` path, a pretrainable backbone's file made by `enecg pretrain` gives None (see `made_by_pretrain`).
    """
    if corpus is None or not str(corpus).strip():
        return None
    if checkpoint is not None and made_by_pretrain(name, checkpoint):
        return None
    config = get_config(name)
    wanted = corpus_id(corpus)
    parts = expand_corpora([wanted])
    reasons = []
    for trained in config.trained_on:
        inside = expand_corpora([trained])
        shared = inside & parts
        if not shared:
            continue
        reason = trained + (" (with its labels)" if trained in config.trained_on_labels else "")
        if trained == wanted:
            pass
        elif wanted in inside:
            reason += f", which includes {wanted}"
        elif trained in parts:
            reason += f", which is part of {wanted}"
        elif parts - {wanted} <= inside:
            reason += f", which includes every part of {wanted}"
        else:
            shared_leaves = sorted(shared - set(COMPOSITE_CORPORA)) or sorted(shared)
            reason += f", which shares {', '.join(shared_leaves)} with {wanted}"
        reasons.append(reason)
    if not reasons:
        return None
    line = (
        f"checkpoint {config.name} ({config.checkpoint_file}) was trained on {'; '.join(reasons)}: "
        "test records may have been its training records"
    )
    if config.pretrainable:
        line += (
            f" (if it is the published file; one made by `enecg pretrain --model {config.name}` saw only this "
            "corpus's training records)"
        )
    return line


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
