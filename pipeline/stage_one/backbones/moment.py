"""MOMENT-1 (Goswami et al., 2024): a T5-encoder time-series foundation model, run channel-independently.

Each lead of a 512-sample window is normalised on its own (RevIN, no affine: mean 0, std 1 over the window),
cut into 64 patches of 8 samples, linearly embedded, given sinusoidal positions and encoded by a T5 encoder
(relative attention bias) as one sequence per lead. The embedding is MOMENT's `embed(reduction="mean")`:
mean over leads, then over patches. Reference: moment-timeseries-foundation-model/moment,
momentfm/models/moment.py (`MOMENT.embed`), layers/revin.py, layers/embed.py.

How a 10 s record maps to 512 samples: the whole record is one window, resampled to 512 samples
(spec: 51.2 Hz), so that `extract`'s resampler does the rate change once. This is MOMENT's own ECG recipe
(momentfm/data/ptbxl_classification_dataset.py interpolates each 10 s PTB-XL record to seq_len = 512) and keeps
the model at the 512-sample / 64-patch length it was pretrained on. EnECG's main.py instead resamples to 5000
samples (500 Hz) and hands all of them to MOMENT, i.e. 625 patches, far beyond the pretraining length; we do
not copy that. Longer records are split into 512-sample (10 s) windows whose embeddings are averaged; a
shorter one is zero-padded and the padding masked out as MOMENT's `input_mask` does (RevIN statistics, mask
embedding, attention and pooling see only the observed patches). `preprocess` is the identity: any per-lead
scaling (EnECG's z-score, MOMENT's PTB-XL z-score) is undone by RevIN.

Checkpoints are the published Hugging Face folders (config.json + model.safetensors, PyTorchModelHubMixin
layout). `MOMENTPipeline.from_pretrained` loads them with strict=False and silently drops the stored
reconstruction head; here every key (head.linear.*, the unused encoder.embed_tokens, the stored positional
table) is built and checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.stage_one.backbones import (
    Backbone,
    BackboneConfig,
    InputSpec,
    load_state_dict_strict,
    register_backbone,
    windows,
)
from pipeline.stage_one.backbones.hubert_ecg import read_hf_config, read_hf_weights

SPEC = InputSpec(
    sampling_rate=51.2,
    samples=512,
    normalisation="none outside the model; RevIN inside: per-lead mean 0 / std 1 over each 512-sample (10 s) window",
)
D_MODELS = {"small": 512, "base": 768, "large": 1024}
POSITIONS = 5000  # rows of MOMENT's stored sinusoidal table (PositionalEmbedding max_len)
REVIN_EPS = 1e-5
# Options of MOMENT's config that change the architecture, with the value every published MOMENT-1 has.
PUBLISHED_LAYOUT = {
    "transformer_type": "encoder_only",
    "revin_affine": False,
    "add_positional_embedding": True,
    "value_embedding_bias": False,
}


class PatchEmbedding(nn.Module):
    """Patch -> d_model (no bias), a learned embedding for unobserved patches, and fixed sinusoidal positions."""

    def __init__(self, d_model: int, patch_len: int):
        super().__init__()
        self.value_embedding = nn.Linear(patch_len, d_model, bias=False)
        self.mask_embedding = nn.Parameter(torch.zeros(d_model))
        self.position_embedding = nn.Module()
        # MOMENT saves its sinusoidal table in the checkpoint: it is loaded from there, not recomputed.
        self.position_embedding.register_buffer("pe", torch.zeros(1, POSITIONS, d_model))

    def forward(self, patches: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """[B, C, N, patch_len] values and [B, N] observed flags -> [B, C, N, d_model] tokens."""
        tokens = torch.where(observed[:, None, :, None], self.value_embedding(patches), self.mask_embedding)
        return tokens + self.position_embedding.pe[:, : patches.shape[2]]


class MOMENTModel(nn.Module):
    """MOMENT with the published key layout: patch_embedding.*, encoder.* (a T5 encoder stack), head.linear.*.

    `head` is the pretraining reconstruction head (d_model -> patch_len); embeddings never use it, but the
    published files carry it, so it is built to check its keys and shapes.
    """

    def __init__(self, config: dict):
        super().__init__()
        from transformers import (  # ~5 s to import: only when a MOMENT is built
            T5Config,
            T5EncoderModel,
        )

        t5 = T5Config.from_dict(dict(config["t5_config"]))  # a copy: some transformers versions edit the dict
        self.patch_len = config["patch_len"]
        self.patch_embedding = PatchEmbedding(t5.d_model, self.patch_len)
        # MOMENT keeps T5EncoderModel(...).get_encoder(): the T5 stack with its (unused) token embedding.
        self.encoder = T5EncoderModel(t5).encoder
        self.head = nn.ModuleDict({"linear": nn.Linear(t5.d_model, self.patch_len)})

    def patch_embeddings(self, x: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, L] signals and [B, L] observed flags -> ([B, C, N, d_model] encodings, [B, N] observed patches)."""
        batch, channels, _ = x.shape
        weight = observed[:, None, :].to(x.dtype)
        count = weight.sum(dim=-1, keepdim=True)
        mean = (x * weight).sum(dim=-1, keepdim=True) / count
        std = ((x - mean).square() * weight).sum(dim=-1, keepdim=True).div(count).sqrt() + REVIN_EPS
        x = torch.nan_to_num((x - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)

        patches = x.unfold(-1, self.patch_len, self.patch_len)  # [B, C, N, patch_len]
        patch_observed = observed.unfold(-1, self.patch_len, self.patch_len).all(dim=-1)  # [B, N]
        tokens = self.patch_embedding(patches, patch_observed)
        n_patches = tokens.shape[2]
        encoded = self.encoder(
            inputs_embeds=tokens.reshape(batch * channels, n_patches, -1),
            attention_mask=patch_observed.repeat_interleave(channels, dim=0).long(),
        ).last_hidden_state
        return encoded.reshape(batch, channels, n_patches, -1), patch_observed

    def forward(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """MOMENT's `embed(reduction="mean")`: mean over channels, then over observed patches -> [B, d_model]."""
        encoded, patch_observed = self.patch_embeddings(x, observed)
        weight = patch_observed[..., None].to(encoded.dtype)
        return (encoded.mean(dim=1) * weight).sum(dim=1) / weight.sum(dim=1)


def load_model(folder: Path, d_model: int | None = None) -> MOMENTModel:
    """Build MOMENT from the folder's config.json and load model.safetensors strictly (eval mode).

    `d_model`, when given, must match the config's T5 width: it catches a small folder registered as large.
    """
    config = read_hf_config(folder)
    for option, published in PUBLISHED_LAYOUT.items():
        if config.get(option, published) != published:
            raise CheckpointError(
                f"{folder}/config.json sets {option}={config[option]!r}; only the published MOMENT-1 layout "
                f"({option}={published!r}) is supported: use an AutonLab/MOMENT-1 checkpoint"
            )
    if config.get("patch_stride_len") != config.get("patch_len") or "t5_config" not in config:
        raise CheckpointError(
            f"{folder}/config.json is not a MOMENT-1 config (needs t5_config and patch_len == patch_stride_len)"
        )
    width = config["t5_config"]["d_model"]
    if d_model is not None and width != d_model:
        raise CheckpointError(
            f"{folder}/config.json has d_model {width}, but this backbone expects {d_model}: "
            f"use the MOMENT size whose d_model is {width}, or the matching checkpoint folder"
        )
    model = MOMENTModel(config)
    load_state_dict_strict(model, read_hf_weights(folder), folder)
    return model.eval()


class MOMENT(Backbone):
    """Frozen MOMENT-1 on 12-lead records resampled to 512 samples per 10 s; see the module docstring."""

    def __init__(self, model: MOMENTModel, config: BackboneConfig):
        super().__init__()
        self.model = model
        self.config = config  # the size registered under this instance's name

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        samples = self.config.spec.samples
        segments = windows(x, samples)  # [B, W, C, 512]
        batch, count, channels, _ = segments.shape
        observed = torch.arange(samples, device=x.device) < x.shape[-1]  # False only on a short record's padding
        flat = segments.reshape(batch * count, channels, samples)
        embedding = self.model(flat, observed.expand(batch * count, -1))
        return {"embedding": embedding.reshape(batch, count, -1).mean(dim=1)}


def _register(size: str, d_model: int) -> None:
    config = BackboneConfig(
        name=f"moment-{size}",
        spec=SPEC,
        embedding_dim=d_model,
        checkpoint_file=f"MOMENT-1-{size}",
        source=f"https://huggingface.co/AutonLab/MOMENT-1-{size} (folder: config.json + model.safetensors)",
        trained_on=("time-series-pile",),
        trained_on_source=(
            "moment-timeseries-foundation-model/moment README.md (Goswami et al., ICML 2024) and the "
            "AutonLab/Timeseries-PILE card: pretrained (masked reconstruction) on the Time-series Pile: Informer "
            "long-horizon datasets, Monash archive, UCR/UEA classification archive, TSB-UAD"
        ),
    )

    @register_backbone(config)
    def build(checkpoint: Path) -> MOMENT:
        return MOMENT(load_model(checkpoint, d_model), config)


for _size, _d_model in D_MODELS.items():
    _register(_size, _d_model)


def parity_outputs(fixture_dir: Path) -> dict[str, np.ndarray]:
    """The raw model on the fixture's [B, 12, 512] input, every sample observed (input_mask=None)."""
    model = load_model(fixture_dir / "checkpoint")
    x = torch.from_numpy(np.load(fixture_dir / "input.npy"))
    observed = torch.ones(x.shape[0], x.shape[-1], dtype=torch.bool)
    with torch.no_grad():
        encoded, _ = model.patch_embeddings(x, observed)
        features = model(x, observed)
    return {"expected_patch_embeddings": encoded.numpy(), "expected_features": features.numpy()}
