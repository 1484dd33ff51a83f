"""ECG-FM (bowang-lab/ECG-FM), natively in PyTorch: loads the published fairseq-signals checkpoints without fairseq.

ECG-FM is a wav2vec 2.0 / CMSC transformer (fairseq-signals `ecg_transformer`) pretrained on MIMIC-IV-ECG and
PhysioNet 2021, which includes PTB-XL (`trained_on`); the finetuned file saw PhysioNet 2021's labels too. One
5 s window of 12 leads at 500 Hz goes through

    conv feature extractor   4 x Conv1d(k=2, stride=2, no bias) + GELU; GroupNorm(one group per channel) on the
                             first only ("default" extractor mode)          [B, 12, 2500] -> [B, 256, 156]
    layer_norm               over the 256 conv channels of every token
    post_extract_proj        Linear 256 -> 768
    conv_pos                 x + GELU(weight-normed grouped Conv1d(k=128, groups=16), one output sample trimmed)
    encoder                  LayerNorm, then 12 post-LN transformer layers (768, 12 heads, FFN 3072, GELU)

and the embedding is the token mean exactly as ECG-FM defines it (scripts/embs.py, and the classifier's own
pooling): sum over tokens divided, per channel, by the number of non-zero tokens. The finetuned classifier
(`ecg_transformer_classifier`) adds `proj`, a Linear from that pooled vector to its labels (pre-sigmoid logits).

Checkpoints are fairseq-signals `Trainer.save_checkpoint` dicts; only `cfg['model']` (every dimension is read from
it, so the reduced test fixtures and the published 90M-parameter files load through the same code) and `model`
(the state dict) are used. The file loads with `torch.load(weights_only=True)`: fairseq stores `cfg` as a plain
nested dict (`OmegaConf.to_container`), and the rest of the container is dicts, lists, OrderedDicts, tensors and
primitives. This was checked on the shared fixtures (written by fairseq-signals itself) and by scanning the
pickle opcodes of the published checkpoints' weight-free exports (biomachinelearning1/ECGFM): the only globals
are OrderedDict and tensor rebuilds. Were a file to carry an OmegaConf object instead, `load_torch_file` refuses
it with a CheckpointError rather than unpickling arbitrary classes.

Two state-dict layouts exist and both are mapped onto this module's own, which is the classifier's:
  - pretrained (`wav2vec2_cmsc`): encoder keys at top level, plus pretraining-only heads (`mask_emb`, `quantizer.*`,
    `project_q.*`, `final_proj.*`) that the embedding never uses; they are dropped by name, anything else unknown
    is refused;
  - finetuned (`ecg_transformer_classifier`): encoder keys under `encoder.`, plus `proj.weight`/`proj.bias`.
The positional conv's weight norm is stored as `weight_g`/`weight_v` by the fairseq-signals that wrote the
published files, and as `parametrizations.weight.original0`/`original1` by fairseq-signals after 2025-01-20;
both name the same two tensors and both are accepted.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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

SPEC = InputSpec(
    sampling_rate=500.0,
    samples=2500,
    leads=LEADS_12,
    normalisation="per-lead z-score over the whole record (mean 0, population std 1; constant leads set to 0)",
)
SOURCE = "https://huggingface.co/wanglab/ecg-fm"
PRETRAINED_MODEL = "wav2vec2_cmsc"
FINETUNED_MODEL = "ecg_transformer_classifier"
# Pretraining-only parameters of wav2vec2_cmsc: masking token, quantised targets and the contrastive projection.
PRETRAINING_ONLY = ("mask_emb", "quantizer.", "project_q.", "final_proj.")


@dataclass(frozen=True)
class ECGFMConfig:
    """The dimensions of one ECG-FM network, as read from a checkpoint's `cfg['model']`."""

    in_leads: int
    conv_layers: tuple[tuple[int, int, int], ...]  # (channels, kernel, stride) per conv block
    conv_bias: bool
    dim: int
    layers: int
    heads: int
    ffn_dim: int
    conv_pos: int
    conv_pos_groups: int
    num_labels: int | None  # classifier outputs; None for the pretrained encoder

    @classmethod
    def from_cfg(cls, model_cfg: dict, source: Path | str) -> ECGFMConfig:
        """Read the fields fairseq-signals builds the model from; refuse variants this module does not implement."""

        def field(name):
            if name not in model_cfg:
                raise CheckpointError(f"checkpoint {source}: cfg['model'] has no {name!r}; is it an ECG-FM checkpoint?")
            return model_cfg[name]

        if field("extractor_mode") != "default" or field("layer_norm_first"):
            raise CheckpointError(
                f"checkpoint {source}: ECG-FM uses extractor_mode='default' and post-LN layers (layer_norm_first=False);"
                f" this cfg has {model_cfg['extractor_mode']!r} / {model_cfg['layer_norm_first']!r}, which this loader does not implement"
            )
        return cls(
            in_leads=int(field("in_d")),
            conv_layers=_conv_layers(field("conv_feature_layers"), source),
            conv_bias=bool(field("conv_bias")),
            dim=int(field("encoder_embed_dim")),
            layers=int(field("encoder_layers")),
            heads=int(field("encoder_attention_heads")),
            ffn_dim=int(field("encoder_ffn_embed_dim")),
            conv_pos=int(field("conv_pos")),
            conv_pos_groups=int(field("conv_pos_groups")),
            num_labels=int(field("num_labels")) if model_cfg.get("_name") == FINETUNED_MODEL else None,
        )


def _conv_layers(spec: str, source: Path | str) -> tuple[tuple[int, int, int], ...]:
    """Parse fairseq's conv spec, e.g. "[(256, 2, 2)] * 4", without `eval`: literals joined by `+` and `*` only."""

    def value(node):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        return ast.literal_eval(node)

    try:
        layers = value(ast.parse(spec, mode="eval").body)
        return tuple((int(c), int(k), int(s)) for c, k, s in layers)
    except (SyntaxError, ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint {source}: cannot read conv_feature_layers {spec!r}: {error}") from error


class FeatureExtractor(nn.Module):
    """Strided convs from raw leads to tokens. Module indices mirror fairseq's Sequential(conv, dropout, norm, GELU)
    so that checkpoint keys (`conv_layers.0.0.weight`, `conv_layers.0.2.weight`) load as they are; the dropout slot
    (p=0 in the reference) is an Identity."""

    def __init__(self, cfg: ECGFMConfig):
        super().__init__()
        blocks, channels_in = [], cfg.in_leads
        for i, (channels, kernel, stride) in enumerate(cfg.conv_layers):
            conv = nn.Conv1d(channels_in, channels, kernel, stride=stride, bias=cfg.conv_bias)
            if i == 0:  # GroupNorm with one group per channel: each channel normalised over time, per record
                blocks.append(nn.Sequential(conv, nn.Identity(), nn.GroupNorm(channels, channels), nn.GELU()))
            else:
                blocks.append(nn.Sequential(conv, nn.Identity(), nn.GELU()))
            channels_in = channels
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv_layers:
            x = block(x)
        return x


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is `weight_g * weight_v / ||weight_v||`, the norm taken per kernel tap (over output and
    input channels), i.e. torch's weight norm with dim=2. Written out so that both stored namings map onto two
    plain parameters and no deprecated `torch.nn.utils.weight_norm` hook is needed."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.randn(channels, channels // groups, kernel))  # scale set by weight_g
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.weight_v.shape[-1] // 2, groups=self.groups)


class ConvPositionalEncoding(nn.Module):
    """Relative position from a wide grouped conv over the tokens (wav2vec 2.0 style)."""

    def __init__(self, cfg: ECGFMConfig):
        super().__init__()
        self.pos_conv = nn.Sequential(WeightNormConv1d(cfg.dim, cfg.conv_pos, cfg.conv_pos_groups))
        # padding k//2 on both sides gives one extra output for an even kernel; fairseq's SamePad drops the last one
        self.trim = 1 if cfg.conv_pos % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        y = self.pos_conv(x.transpose(1, 2))
        if self.trim:
            y = y[..., : -self.trim]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape

        def split(t):
            return t.view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(y.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerLayer(nn.Module):
    """Post-LN layer (layer_norm_first=False): normalise after each residual sum."""

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.self_attn_layer_norm(x + self.self_attn(x))
        return self.final_layer_norm(x + self.fc2(F.gelu(self.fc1(x))))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: ECGFMConfig):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(cfg.dim, cfg.heads, cfg.ffn_dim) for _ in range(cfg.layers))
        self.layer_norm = nn.LayerNorm(cfg.dim)  # post-LN encoders normalise the input, not the output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x)
        for layer in self.layers:
            x = layer(x)
        return x


class ECGTransformer(nn.Module):
    """The ECG-FM encoder: one window [B, leads, samples] -> tokens [B, T, dim] (fairseq's `encoder_out` / `x`)."""

    def __init__(self, cfg: ECGFMConfig):
        super().__init__()
        conv_channels = cfg.conv_layers[-1][0]
        self.feature_extractor = FeatureExtractor(cfg)
        self.layer_norm = nn.LayerNorm(conv_channels)
        self.post_extract_proj = nn.Linear(conv_channels, cfg.dim) if conv_channels != cfg.dim else nn.Identity()
        self.conv_pos = ConvPositionalEncoding(cfg)
        self.encoder = TransformerEncoder(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.post_extract_proj(self.layer_norm(self.feature_extractor(x).transpose(1, 2)))
        return self.encoder(features + self.conv_pos(features))


def pool(tokens: torch.Tensor) -> torch.Tensor:
    """ECG-FM's embedding: token sum over the count of non-zero tokens, per channel (scripts/embs.py)."""
    return tokens.sum(dim=1) / (tokens != 0).sum(dim=1)


class ECGFM(Backbone):
    """Frozen ECG-FM encoder (+ the finetuned classifier's `proj` when the checkpoint has one).

    A record longer than 5 s is cut into non-overlapping 5 s windows (`windows`: a trailing partial window is
    dropped, a record shorter than 5 s is zero-padded, i.e. padded with its mean after z-scoring); each window is
    embedded on its own, as ECG-FM was trained and evaluated, and the record's embedding and logits are the means
    over its windows.
    """

    config = BackboneConfig(
        name="ecgfm",
        spec=SPEC,
        embedding_dim=768,
        checkpoint_file="mimic_iv_ecg_physionet_pretrained.pt",
        source=f"{SOURCE}, file mimic_iv_ecg_physionet_pretrained.pt",
        trained_on=("mimic-iv-ecg", "physionet-2021"),
        trained_on_source=(
            "bowang-lab/ECG-FM README.md: pretrained (self-supervised) on MIMIC-IV-ECG v1.0 and PhysioNet 2021 "
            "v1.0.3; fairseq-signals' PhysioNet 2021 preprocessing skips ptb and st_petersburg_incart by default"
        ),
    )

    def __init__(self, cfg: ECGFMConfig):
        super().__init__()
        self.encoder = ECGTransformer(cfg)
        self.proj = nn.Linear(cfg.dim, cfg.num_labels) if cfg.num_labels else None

    def preprocess(self, signals: np.ndarray) -> np.ndarray:
        """Per-lead z-score over the whole record, as fairseq-signals' preprocess.py / ecg-transform's Standardize
        do before segmenting; a constant lead has no scale and becomes 0 (their 'zero' constant-lead strategy)."""
        signals = np.asarray(signals, dtype=np.float64)
        centred = signals - signals.mean(axis=-1, keepdims=True)
        std = centred.std(axis=-1, keepdims=True)
        return np.where(std > 0, centred / np.where(std > 0, std, 1.0), 0.0).astype(np.float32)

    def windows_forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reference outputs for a batch of single windows [B, leads, samples]: tokens, embedding, logits."""
        tokens = self.encoder(x)
        embedding = pool(tokens)
        out = {"encoder_out": tokens, "embedding": embedding}
        if self.proj is not None:
            out["logits"] = self.proj(embedding)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        split = windows(x, self.config.spec.samples)  # [B, W, C, samples]
        batch, count = split.shape[:2]
        out = self.windows_forward(split.flatten(0, 1))
        return {name: out[name].view(batch, count, -1).mean(dim=1) for name in ("embedding", "logits") if name in out}


class ECGFMFinetuned(ECGFM):
    """ECG-FM finetuned on PhysioNet 2021 (26 labels): the same encoder, and its pre-sigmoid logits as `logits`.

    The label count is read from the checkpoint, so the later mimic_iv_ecg_finetuned.pt (17 MIMIC-IV-ECG labels,
    same classifier layout) loads through this backbone too when params point at it.
    """

    config = BackboneConfig(
        name="ecgfm-finetuned",
        spec=SPEC,
        embedding_dim=768,
        checkpoint_file="physionet_finetuned.pt",
        source=f"{SOURCE}, file physionet_finetuned.pt (published 2024; later replaced by mimic_iv_ecg_finetuned.pt)",
        native_outputs=("logits",),
        trained_on=("mimic-iv-ecg", "physionet-2021"),
        trained_on_labels=("physionet-2021",),
        trained_on_source=(
            "bowang-lab/ECG-FM README.md: fine-tuned from mimic_iv_ecg_physionet_pretrained.pt (MIMIC-IV-ECG v1.0 "
            "+ PhysioNet 2021 v1.0.3) on PhysioNet 2021 v1.0.3 with its labels"
        ),
    )


def native_to_module_keys(state_dict: dict, finetuned: bool, source: Path | str) -> dict:
    """Map a checkpoint's state dict onto `ECGFM`'s keys (the classifier layout): rename the newer weight-norm
    names, put pretrained encoder keys under `encoder.` and drop, by name, the pretraining-only heads."""
    renamed = {}
    for key, tensor in state_dict.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        if not finetuned:
            if key.startswith(PRETRAINING_ONLY):
                continue
            key = f"encoder.{key}"
        if key in renamed:
            raise CheckpointError(f"checkpoint {source} stores {key} twice (under both weight-norm namings)")
        renamed[key] = tensor
    return renamed


def build_from_cfg(model_cfg: dict, source: Path | str = "cfg") -> ECGFM:
    """An uninitialised ECG-FM sized by a fairseq-signals `cfg['model']` (finetuned when it is the classifier).
    Build it under `torch.device("meta")` to inspect the full model without allocating its weights."""
    cfg = ECGFMConfig.from_cfg(model_cfg, source)
    return ECGFMFinetuned(cfg) if cfg.num_labels else ECGFM(cfg)


def load_checkpoint(path: Path) -> ECGFM:
    """Build ECG-FM from a fairseq-signals checkpoint file and load every weight strictly."""
    checkpoint = load_torch_file(path)
    cfg = checkpoint.get("cfg") if isinstance(checkpoint, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "model" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a fairseq-signals checkpoint (a dict with cfg['model'] and 'model'); "
            f"download the published ECG-FM file from {SOURCE}"
        )
    name = cfg["model"].get("_name")
    if name not in (PRETRAINED_MODEL, FINETUNED_MODEL):
        raise CheckpointError(
            f"checkpoint {path} holds a {name!r} model; ECG-FM checkpoints are {PRETRAINED_MODEL!r} (pretrained) "
            f"or {FINETUNED_MODEL!r} (finetuned)"
        )
    model = build_from_cfg(cfg["model"], path)
    load_state_dict_strict(model, native_to_module_keys(checkpoint["model"], name == FINETUNED_MODEL, path), path)
    return model


def _load_as(backbone: type[ECGFM], checkpoint: Path) -> ECGFM:
    """Load `checkpoint` for one of the two ECG-FM backbones, refusing the other one's file by name."""
    model = load_checkpoint(checkpoint)
    if type(model) is not backbone:
        other = ECGFMFinetuned if backbone is ECGFM else ECGFM
        kind = "classifier" if model.proj is not None else "pretrained encoder"
        raise CheckpointError(
            f"checkpoint {checkpoint} is an ECG-FM {kind}: use backbone {other.config.name!r} for it; backbone "
            f"{backbone.config.name!r} needs {backbone.config.checkpoint_file} from {SOURCE}"
        )
    if model.encoder.feature_extractor.conv_layers[0][0].in_channels != len(SPEC.leads):
        raise CheckpointError(f"checkpoint {checkpoint} is not a 12-lead ECG-FM (cfg['model']['in_d'])")
    return model


@register_backbone(ECGFM.config)
def build_pretrained(checkpoint: Path) -> ECGFM:
    return _load_as(ECGFM, checkpoint)


@register_backbone(ECGFMFinetuned.config)
def build_finetuned(checkpoint: Path) -> ECGFM:
    return _load_as(ECGFMFinetuned, checkpoint)


@torch.no_grad()
def parity_outputs(fixture_dir: Path) -> dict[str, np.ndarray]:
    """The raw model on a fixture's input (one 5 s window, no preprocessing), named as the fixture's expected_*.npy."""
    model = load_checkpoint(Path(fixture_dir) / "checkpoint.pt").eval()
    out = model.windows_forward(torch.from_numpy(np.load(Path(fixture_dir) / "input.npy")))
    names = {"encoder_out": "expected_encoder_out", "embedding": "expected_features", "logits": "expected_logits"}
    return {names[name]: value.numpy() for name, value in out.items()}
