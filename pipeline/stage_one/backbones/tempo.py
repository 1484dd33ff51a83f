"""TEMPO (Cao et al., ICLR 2024), the prompt-based GPT-2 forecaster, as EnECG uses it.

TEMPO forecasts a single series from its STL decomposition: each component (trend, seasonal, residual) is
cut into overlapping patches, embedded, prefixed with a 9-token text prompt ("Predict the future time step
given the trend"), and the three sequences go through ONE pass of a 6-block GPT-2 whose attention carries a
LoRA adapter (peft). Per-component linear heads map the patch states to a 96-step forecast; the three are
summed and de-normalised with the input's RevIN statistics.

What EnECG takes as the feature (`main.py: inference_tempo`): the value it calls `enc_out` is the FIRST
output of its TEMPO.forward, i.e. that de-normalised 96-step forecast, flattened and fed to its
`projection_tempo` Linear(96, out). This module keeps exactly that as the embedding ([B, 96]), so the
cache reproduces what EnECG's head sees. EnECG's forward differs from DC-research's in one way that
matters: it forecasts from the STL components it is GIVEN (computed with statsmodels, unnormalised),
whereas upstream forecasts from its own moving-average decomposition of the RevIN-normalised input
(`TEMPO.upstream_forecast`, kept for parity with the reference). EnECG's extra `time_attn` layer only
feeds an attention map it discards and is not in the published file, so it is left out.

Input, as EnECG prepares it (`data_loader.py`): the 10 s record z-scored, resampled to 336 samples
(33.6 Hz), ONE lead, STL(period=50). EnECG picks the lead as `record index % 12`, so the meaning of its
feature changes from record to record; here the lead is fixed to II (the rhythm lead). EnECG z-scores
over all 12 leads jointly; with one lead fed, the z-score here is per lead. The STL runs in `preprocess`
(numpy/statsmodels, loader side), which returns the signal and its three components stacked per lead.

The checkpoint `TEMPO-80M_v1.pth` (HF Melady/TEMPO) is a bare state_dict of DC-research `TEMPO` with the
GPT-2 under peft's `gpt2_trend.base_model.model.` prefix, cut to its first 6 blocks. It also carries
parameters no forward pass uses (`mul_season`, `map_resid`, `rev_in_season`, `rev_in_noise`); they are
declared here so that the file loads strictly, key for key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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

SEQ_LEN = 336  # the published model's input length: one 10 s record resampled as EnECG does
PRED_LEN = 96  # its forecast horizon, which is EnECG's feature size
STL_PERIOD = 50  # EnECG's STL period, in samples at 33.6 Hz
COMPONENTS = ("trend", "season", "noise")  # the reference's attribute suffixes, in sequence order

# GPT-2 BPE ids (no BOS/EOS) of "Predict the future time step given the trend" / "... season" /
# "... residual": the reference tokenises these three fixed sentences, so no tokenizer is needed.
_PROMPT_STEM = [47, 17407, 262, 2003, 640, 2239, 1813, 262]
PROMPT_IDS = (_PROMPT_STEM + [5182], _PROMPT_STEM + [1622], _PROMPT_STEM + [29598])

CONFIG = BackboneConfig(
    name="tempo",
    spec=InputSpec(
        sampling_rate=SEQ_LEN / 10,
        samples=SEQ_LEN,
        leads=("II",),
        normalisation=(
            f"per-record per-lead z-score, then statsmodels STL(period={STL_PERIOD}) of every {SEQ_LEN}-sample "
            "window; preprocess returns [B, 4 * leads, T]: signal, trend, seasonal, residual per lead"
        ),
    ),
    embedding_dim=PRED_LEN,
    checkpoint_file="TEMPO-80M_v1.pth",
    source="https://huggingface.co/Melady/TEMPO (file TEMPO-80M_v1.pth)",
    trained_on=("ett",),
    trained_on_source=(
        "Melady/TEMPO model card metadata: datasets ETDataset/ett, base model openai-community/gpt2 (text); the "
        "full pre-training mix of TEMPO-80M_v1.pth is not stated (DC-research/TEMPO README.md pre-trains on "
        "forecasting benchmarks: ETT, electricity, traffic, weather); no ECG corpus is named"
    ),
)


class RevIN(nn.Module):
    """Reversible instance normalisation, stateless: the statistics are returned instead of stored."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.affine_weight = nn.Parameter(torch.ones(1))
        self.affine_bias = nn.Parameter(torch.zeros(1))

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and biased std (+eps inside the root) over time of [N, L]."""
        return x.mean(1, keepdim=True), torch.sqrt(x.var(1, keepdim=True, unbiased=False) + self.eps)

    def normalize(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return (x - mean) / std * self.affine_weight + self.affine_bias

    def denormalize(self, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        # the reference divides by (weight + eps * eps), not by (weight + eps)
        return (y - self.affine_bias) / (self.affine_weight + self.eps * self.eps) * std + mean


class TEMPO(nn.Module):
    """DC-research TEMPO with the published file's exact parameter layout (prompt mode, no prompt pool).

    The GPT-2 is transformers' `GPT2Model` built with only the kept blocks (the reference builds 12 and
    slices `h[:gpt_layers]`, which gives the same keys) and wrapped by peft LoRA on `c_attn` as the
    reference does; in eval mode LoRA adds lora_B(lora_A(x)) * alpha / r to the frozen projection.
    `n_head` cannot be read from the weights: 12 is GPT-2's.
    """

    def __init__(
        self,
        seq_len: int = SEQ_LEN,
        pred_len: int = PRED_LEN,
        d_model: int = 768,
        n_head: int = 12,
        gpt_layers: int = 6,
        patch_size: int = 16,
        stride: int = 8,
        vocab_size: int = 50257,
        n_positions: int = 1024,
        lora_rank: int = 16,
    ):
        super().__init__()
        self.seq_len, self.pred_len = seq_len, pred_len
        self.patch_size, self.stride = patch_size, stride
        self.patch_num = (seq_len - patch_size) // stride + 2  # +1 for the replication-padded tail
        self.prompt_len = len(PROMPT_IDS[0])

        # in the published file, used by no forward pass (upstream's seasonal-Fourier and residual maps)
        self.mul_season = nn.ParameterDict({"a": nn.Parameter(torch.zeros(2, 1)), "b": nn.Parameter(torch.zeros(2, 1))})
        self.map_resid = nn.Linear(seq_len, seq_len)
        # upstream's learned decomposition (used by `upstream_forecast` only)
        self.map_trend = nn.Linear(seq_len, seq_len)
        self.map_season = nn.Sequential(nn.Linear(seq_len, 4 * seq_len), nn.ReLU(), nn.Linear(4 * seq_len, seq_len))

        # transformers and peft take ~5 s to import: only when a TEMPO is built, not whenever the registry loads
        from peft import LoraConfig, get_peft_model
        from transformers import GPT2Config, GPT2Model

        gpt2 = GPT2Model(
            GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=d_model, n_layer=gpt_layers, n_head=n_head)
        )
        lora = LoraConfig(
            r=lora_rank, lora_alpha=16, lora_dropout=0.1, bias="lora_only", target_modules=["c_attn"], fan_in_fan_out=True
        )
        self.gpt2_trend = get_peft_model(gpt2, lora)  # one GPT-2 for all three components, despite the name

        for name in COMPONENTS:
            setattr(self, f"in_layer_{name}", nn.Linear(patch_size, d_model))
            setattr(self, f"out_layer_{name}", nn.Linear(d_model * self.patch_num, pred_len))
            setattr(self, f"prompt_layer_{name}", nn.Linear(d_model, d_model))
            setattr(self, f"rev_in_{name}", RevIN())  # only rev_in_trend is used, for the input statistics
        self.register_buffer("prompt_ids", torch.tensor(PROMPT_IDS), persistent=False)

    def patches(self, series: torch.Tensor) -> torch.Tensor:
        """[N, L] -> [N, patch_num, patch_size]: replicate the last value `stride` times, then unfold."""
        padded = F.pad(series.unsqueeze(1), (0, self.stride), mode="replicate").squeeze(1)
        return padded.unfold(-1, self.patch_size, self.stride)

    def decode(self, trend: torch.Tensor, season: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The normalised-space forecast [N, pred_len] from three [N, L] components, in one GPT-2 pass.

        Each component becomes [its projected prompt embeddings; its patch embeddings]; the three are
        concatenated along time, and only each component's patch positions feed its output head.
        """
        batch = trend.shape[0]
        wte = self.gpt2_trend.get_input_embeddings()
        tokens = []
        for index, (name, series) in enumerate(zip(COMPONENTS, (trend, season, noise))):
            prompt = getattr(self, f"prompt_layer_{name}")(wte(self.prompt_ids[index])).expand(batch, -1, -1)
            tokens += [prompt, getattr(self, f"in_layer_{name}")(self.patches(series))]
        hidden = self.gpt2_trend(inputs_embeds=torch.cat(tokens, dim=1)).last_hidden_state
        hidden = hidden.reshape(batch, len(COMPONENTS), self.prompt_len + self.patch_num, -1)[:, :, self.prompt_len :]
        heads = (getattr(self, f"out_layer_{name}") for name in COMPONENTS)
        return sum(head(hidden[:, index].flatten(1)) for index, head in enumerate(heads))

    def forecast(self, x: torch.Tensor, trend: torch.Tensor, season: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        """EnECG's TEMPO.forward output [N, pred_len] from x and its given STL components, each [N, L].

        The components go in as given; x only supplies the RevIN mean/std that de-normalise the forecast.
        """
        mean, std = self.rev_in_trend.statistics(x)
        return self.rev_in_trend.denormalize(self.decode(trend, season, resid), mean, std)

    def upstream_forecast(self, x: torch.Tensor) -> torch.Tensor:
        """DC-research TEMPO.forward output [N, pred_len] from x [N, L] alone (its own decomposition).

        Trend: a 25-sample moving average (edges replicated) of the normalised input, mapped by
        `map_trend`; season: `map_season` of the detrended input; residual: what is left.
        """
        mean, std = self.rev_in_trend.statistics(x)
        normalised = self.rev_in_trend.normalize(x, mean, std)
        smooth = F.avg_pool1d(F.pad(normalised.unsqueeze(1), (12, 12), mode="replicate"), 25, stride=1).squeeze(1)
        trend = self.map_trend(smooth)
        season = self.map_season(normalised - trend)
        return self.rev_in_trend.denormalize(self.decode(trend, season, normalised - trend - season), mean, std)


def current_key_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Translate a file written by older peft/transformers to the layout this module builds, explicitly.

    peft before 0.7 stored a LoRA-wrapped layer's own weight as `attn.c_attn.weight|bias` (now
    `attn.c_attn.base_layer.weight|bias`), and older transformers saved each block's constant causal-mask
    buffers `attn.bias` / `attn.masked_bias`. Those two differences are mapped; everything else must match.
    """
    translated = {}
    for key, value in state_dict.items():
        if re.search(r"\.h\.\d+\.attn\.(bias|masked_bias)$", key):
            continue
        translated[re.sub(r"(\.attn\.c_attn)\.(weight|bias)$", r"\1.base_layer.\2", key)] = value
    return translated


def _dimensions(state_dict: dict[str, torch.Tensor], source: Path) -> dict[str, int]:
    """TEMPO's constructor sizes, read from the weights themselves (all but n_head and stride)."""
    gpt2 = "gpt2_trend.base_model.model."
    try:
        d_model, patch_size = state_dict["in_layer_trend.weight"].shape
        vocab_size = state_dict[gpt2 + "wte.weight"].shape[0]
        n_positions = state_dict[gpt2 + "wpe.weight"].shape[0]
        lora_rank = state_dict[gpt2 + "h.0.attn.c_attn.lora_A.default.weight"].shape[0]
        seq_len = state_dict["map_trend.weight"].shape[0]
        pred_len = state_dict["out_layer_trend.weight"].shape[0]
    except KeyError as error:
        raise CheckpointError(
            f"checkpoint {source} lacks key {error.args[0]!r}: it is not a TEMPO state_dict (expected TEMPO-80M_v1.pth)"
        ) from None
    blocks = re.compile(re.escape(gpt2) + r"h\.(\d+)\.")
    gpt_layers = len({match.group(1) for key in state_dict if (match := blocks.match(key))})
    return dict(
        seq_len=seq_len, pred_len=pred_len, d_model=d_model, gpt_layers=gpt_layers, patch_size=patch_size,
        vocab_size=vocab_size, n_positions=n_positions, lora_rank=lora_rank,
    )


def load_tempo(path: Path, n_head: int = 12) -> TEMPO:
    """TEMPO in eval mode from a bare state_dict file, sized by its weights and loaded strictly."""
    state_dict = load_torch_file(path)
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state_dict).__name__}, not TEMPO's bare state_dict")
    state_dict = current_key_layout(state_dict)
    model = TEMPO(**_dimensions(state_dict, path), n_head=n_head)
    load_state_dict_strict(model, state_dict, path)
    return model.eval()


class TempoBackbone(Backbone):
    """TEMPO over one lead (channel-independent if given several): embedding = EnECG's 96-step forecast."""

    config = CONFIG

    def __init__(self, model: TEMPO):
        super().__init__()
        self.model = model

    def preprocess(self, signals: np.ndarray) -> np.ndarray:
        """[B, C, T] millivolts -> [B, 4C, W * 336]: per lead (z-scored signal, trend, seasonal, residual).

        The record is z-scored as a whole (a flat lead is only centred, as in EnECG), then cut into
        336-sample windows (`windows`: a short record is zero-padded, a partial tail dropped) because STL
        must see exactly what the model will see.
        """
        from statsmodels.tsa.seasonal import (
            STL,  # loader-side only; the model itself does not need it
        )

        signals = np.asarray(signals, dtype=np.float64)
        centred = signals - signals.mean(-1, keepdims=True)
        std = centred.std(-1, keepdims=True)
        scored = np.divide(centred, std, out=centred.copy(), where=std > 0)
        cut = windows(torch.from_numpy(scored), SEQ_LEN).numpy()  # [B, W, C, 336]
        series = cut.reshape(-1, SEQ_LEN)
        parts = np.empty((len(series), 4, SEQ_LEN))
        for row, values in enumerate(series):
            fit = STL(values, period=STL_PERIOD).fit()
            parts[row] = (values, fit.trend, fit.seasonal, fit.resid)
        batch, count, leads, _ = cut.shape
        parts = parts.reshape(batch, count, leads, 4, SEQ_LEN).transpose(0, 2, 3, 1, 4)
        return parts.reshape(batch, leads * 4, count * SEQ_LEN).astype(np.float32)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`preprocess` output [B, 4C, T] -> {"embedding": [B, 96]}, the mean over windows and leads."""
        if x.ndim != 3 or x.shape[1] % 4:
            raise ValueError(
                f"TEMPO takes preprocess() output [B, 4 * leads, T] (signal, trend, seasonal, residual); got {tuple(x.shape)}"
            )
        cut = windows(x, SEQ_LEN)  # [B, W, 4C, 336]
        batch, count = cut.shape[:2]
        series = cut.reshape(-1, 4, SEQ_LEN)
        forecast = self.model.forecast(series[:, 0], series[:, 1], series[:, 2], series[:, 3])
        return {"embedding": forecast.view(batch, -1, forecast.shape[-1]).mean(1)}


@register_backbone(CONFIG)
def tempo(checkpoint: Path) -> TempoBackbone:
    """The published TEMPO-80M_v1.pth, refused unless it takes 336-sample inputs and forecasts 96 steps."""
    model = load_tempo(checkpoint)
    if (model.seq_len, model.pred_len) != (SEQ_LEN, PRED_LEN):
        raise CheckpointError(
            f"checkpoint {checkpoint} is a TEMPO for {model.seq_len} input / {model.pred_len} output samples; "
            f"EnECG's feature needs {SEQ_LEN} / {PRED_LEN} (TEMPO-80M_v1.pth)"
        )
    return TempoBackbone(model)


def parity_outputs(fixture_dir: Path) -> dict[str, np.ndarray]:
    """The fixture's outputs from its decomposed inputs ([N, L, 1] each); n_head comes from its config."""
    fixture_dir = Path(fixture_dir)
    n_head = json.loads((fixture_dir / "config.json").read_text())["constructor"]["gpt2_config_override"]["n_head"]
    model = load_tempo(fixture_dir / "checkpoint.pth", n_head=n_head)
    x, trend, season, resid = (
        torch.from_numpy(np.load(fixture_dir / f"{name}.npy"))[..., 0]
        for name in ("input", "input_trend", "input_seasonal", "input_resid")
    )
    with torch.no_grad():
        features = model.forecast(x, trend, season, resid)
        upstream = model.upstream_forecast(x)
    return {"expected_features": features.numpy(), "expected_upstream_forecast": upstream.unsqueeze(-1).numpy()}
