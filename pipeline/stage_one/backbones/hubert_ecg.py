"""HuBERT-ECG (Coppola et al., 2024): a HuBERT speech transformer pretrained on 9.1M 12-lead ECGs.

The model is transformers' `HubertModel` run on one long 1-D signal: the 12 leads of a 5 s ECG, flattened
lead-major and decimated to 100 Hz (12 x 500 = 6000 samples -> 93 frames of the conv feature encoder).
The input pipeline follows the reference (Edoar-do/HuBERT-ECG, code/utils.py `ecg_preprocessing` and
code/dataset.py `__getitem__`), in its order:

1. `preprocess` (per lead, 500 Hz, whole record): biosppy's FIR "band-pass 0.05-47 Hz" (`filter_signal`
   with order int(0.3 * fs) = 150, bumped to 151 taps, a Hamming-window firwin applied forward-backward),
   then min-max scaling of each lead to [-1, 1] over the whole record. With only 151 taps the 0.05 Hz edge is
   not realisable: the filter keeps ~98% of a DC offset and is in effect a 47 Hz low-pass. We keep it, since
   the published weights were trained on exactly this.
2. `forward`: each 5 s window [12, 2500] is flattened lead-major to 30,000 samples and only then decimated by
   5 with `scipy.signal.decimate` (order-8 Chebyshev I, zero phase). Decimating after flattening lets the
   anti-alias filter run across lead boundaries; the model was pretrained on that, so we do it the same way.
   There is no torch equivalent of this IIR forward-backward filter, so this one step runs in scipy on the
   CPU (cheap next to the transformer; the backbone is frozen, so no gradient is lost).
3. embedding = mean over time of the last hidden state, as HuBERTForECGClassification pools it without an
   attention mask. A record is split into non-overlapping 5 s windows whose embeddings are averaged (10 s
   corpus records: two windows); a record shorter than 5 s is zero-padded (no attention mask).

Checkpoints are the published Hugging Face folders (config.json + model.safetensors or pytorch_model.bin,
written by `HuBERTECG.save_pretrained`). We build the architecture from that config.json and load every key
strictly: no `from_pretrained`, which would skip mismatches and needs the repo's remote code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from scipy.signal import decimate, filtfilt, firwin
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.stage_one.backbones import (
    Backbone,
    BackboneConfig,
    InputSpec,
    load_state_dict_strict,
    load_torch_file,
    register_backbone,
    windows,
)

SAMPLING_RATE = 500  # the rate of the reference's filtering and of its stored ECGs
DECIMATION = 5  # 500 Hz -> the model's 100 Hz
SPEC = InputSpec(
    sampling_rate=SAMPLING_RATE,
    samples=5 * SAMPLING_RATE,
    normalisation="FIR band-pass 0.05-47 Hz (151 taps, forward-backward), per-lead min-max to [-1, 1]; "
    "5 s windows flattened lead-major then decimated by 5 to 100 Hz inside the model",
)
FILTER_TAPS = firwin(151, [0.05, 47.0], pass_zero=False, fs=SAMPLING_RATE)
HIDDEN_SIZES = {"small": 512, "base": 768, "large": 960}


def hubert_ecg_model(config: dict) -> nn.Module:
    """The published `HuBERTECG` model from its config.json: transformers' HubertModel plus its pretraining heads.

    `final_proj` and `label_embedding` (one per k-means ensemble member) only serve the masked-prediction
    pretraining loss, but every published file carries them; building them from config.json lets the loader
    check every key and shape of the file instead of dropping some unchecked. They are attached to the
    HubertModel itself, so the keys sit at the top level as in the published class. transformers takes ~5 s
    to import, so it is imported here, when a HuBERT-ECG is built, not whenever the registry loads.
    """
    from transformers import HubertConfig, HubertModel

    hubert_config = HubertConfig.from_dict(config)
    model = HubertModel(hubert_config)
    vocab_sizes = config.get("vocab_sizes", [100])  # HuBERTECGConfig's default
    width, projection = hubert_config.hidden_size, hubert_config.classifier_proj_size
    model.final_proj = nn.ModuleList(nn.Linear(width, projection) for _ in vocab_sizes)
    model.label_embedding = nn.ModuleList(nn.Embedding(size, projection) for size in vocab_sizes)
    return model


def read_hf_config(folder: Path) -> dict:
    """The config.json of a Hugging Face checkpoint folder, or a CheckpointError that says what is missing."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json; pass the whole downloaded checkpoint folder")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise CheckpointError(f"cannot parse {path}: {error}; download the checkpoint folder again") from error


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of a Hugging Face checkpoint folder: model.safetensors, else pytorch_model.bin."""
    folder = Path(folder)
    safetensors_file, torch_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        try:
            return safetensors.torch.load_file(safetensors_file)
        except Exception as error:  # safetensors raises its own error types for a bad file
            raise CheckpointError(f"cannot read checkpoint {safetensors_file}: {error}") from error
    if torch_file.is_file():
        return load_torch_file(torch_file)
    raise CheckpointError(f"{folder} has neither model.safetensors nor pytorch_model.bin; download the weights too")


def load_model(folder: Path, hidden_size: int | None = None) -> nn.Module:
    """Build HuBERTECG from the folder's config.json and load its weights strictly (eval mode).

    `hidden_size`, when given, must match the config: it catches a small folder registered as large before
    any weights are read.
    """
    config = read_hf_config(folder)
    width = config.get("hidden_size")
    if hidden_size is not None and width != hidden_size:
        raise CheckpointError(
            f"{folder}/config.json has hidden_size {width}, but this backbone expects {hidden_size}: "
            f"use the HuBERT-ECG size whose hidden size is {width}, or the matching checkpoint folder"
        )
    model = hubert_ecg_model(config)
    load_state_dict_strict(model, read_hf_weights(folder), folder)
    return model.eval()


class HuBERTECG(Backbone):
    """Frozen HuBERT-ECG on 12-lead 500 Hz records; see the module docstring for the input pipeline."""

    def __init__(self, model: nn.Module, config: BackboneConfig):
        super().__init__()
        self.model = model
        self.config = config  # the size registered under this instance's name

    def preprocess(self, signals: np.ndarray) -> np.ndarray:
        padlen = min(3 * len(FILTER_TAPS), signals.shape[-1] - 1)  # scipy's default, shortened for short records
        filtered = filtfilt(FILTER_TAPS, 1.0, signals.astype(np.float64), axis=-1, padlen=padlen)
        low, high = filtered.min(axis=-1, keepdims=True), filtered.max(axis=-1, keepdims=True)
        return (2 * (filtered - low) / (high - low + 1e-8) - 1).astype(np.float32)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        segments = windows(x, self.config.spec.samples)  # [B, W, 12, 2500]
        batch, count = segments.shape[:2]
        flat = segments.reshape(batch * count, -1).detach().cpu().double().numpy()  # lead-major, as the reference
        decimated = torch.from_numpy(decimate(flat, DECIMATION, axis=-1).copy()).to(x.device, torch.float32)
        hidden = self.model(decimated).last_hidden_state  # [B * W, frames, hidden]
        return {"embedding": hidden.mean(dim=1).reshape(batch, count, -1).mean(dim=1)}


# Which corpora make up the 9.1M pretraining ECGs is not stated in the repository or on the model cards, so
# `trained_on` stays empty; the corpus list they do give is that of the separate fine-tuned (SFT) checkpoints.
TRAINED_ON_SOURCE = (
    "not stated as a corpus list: Edoar-do/HuBERT-ECG README.md and the Edoardo-BS/hubert-ecg-* cards say "
    "pre-trained (self-supervised) on 9.1 million 12-lead ECGs from four countries (medRxiv "
    "10.1101/2024.11.14.24317328); the corpora they name (Cardio-Learning: PTB, PTB-XL, CPSC, CPSC-Extra, "
    "Georgia, Chapman, Ningbo, SPH, CODE, SaMi-Trop, Hefei) are the fine-tuning set of the separate "
    "HuBERT-ECG-SFT-CardioLearning checkpoints"
)


def _register(size: str, hidden_size: int) -> None:
    config = BackboneConfig(
        name=f"hubert-ecg-{size}",
        spec=SPEC,
        embedding_dim=hidden_size,
        checkpoint_file=f"hubert-ecg-{size}",
        source=f"https://huggingface.co/Edoardo-BS/hubert-ecg-{size} (folder: config.json + model.safetensors)",
        trained_on_source=TRAINED_ON_SOURCE,
    )

    @register_backbone(config)
    def build(checkpoint: Path) -> HuBERTECG:
        return HuBERTECG(load_model(checkpoint, hidden_size), config)


for _size, _hidden_size in HIDDEN_SIZES.items():
    _register(_size, _hidden_size)


def parity_outputs(fixture_dir: Path) -> dict[str, np.ndarray]:
    """The raw model on the fixture's already flattened 100 Hz input (no preprocessing, no decimation)."""
    model = load_model(fixture_dir / "checkpoint")
    with torch.no_grad():
        hidden = model(torch.from_numpy(np.load(fixture_dir / "input.npy"))).last_hidden_state
    return {"expected_last_hidden_state": hidden.numpy(), "expected_features": hidden.mean(dim=1).numpy()}
