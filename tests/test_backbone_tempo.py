"""TEMPO backbone: native checkpoint loading, strict refusal, STL preprocessing, published key layout."""

import json
from functools import cache

import numpy as np
import pytest
import torch

from pipeline.stage_one.backbones import _REGISTRY, LEADS_12
from pipeline.stage_one.backbones.tempo import CONFIG, SEQ_LEN, TEMPO, load_tempo, tempo
from pipeline.errors import CheckpointError
from tests.conftest import FIXTURES, need_shared

GPT2 = "gpt2_trend.base_model.model."


@cache
def _small_model() -> TEMPO:
    torch.manual_seed(0)
    return TEMPO(d_model=24, gpt_layers=2)


def small_state_dict() -> dict[str, torch.Tensor]:
    """A random TEMPO at GPT-2 width 24 (2 blocks, GPT-2's 12 heads), in the published bare-state_dict layout."""
    return dict(_small_model().state_dict())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tempo") / CONFIG.checkpoint_file
    torch.save(small_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def backbone(checkpoint):
    """Built the way build_backbone does, without importing the other backbone modules."""
    return tempo(checkpoint).eval().requires_grad_(False)


def test_registered_with_the_published_file_name():
    assert _REGISTRY["tempo"][0] is CONFIG
    assert CONFIG.checkpoint_file == "TEMPO-80M_v1.pth" and CONFIG.spec.leads == ("II",)
    assert set(CONFIG.spec.leads) <= set(LEADS_12)


def test_forward_gives_a_finite_embedding_per_record(backbone):
    signals = np.random.default_rng(0).standard_normal((2, 1, SEQ_LEN)).astype(np.float32)
    prepared = backbone.preprocess(signals)
    assert prepared.shape == (2, 4, SEQ_LEN) and prepared.dtype == np.float32
    with torch.no_grad():
        embedding = backbone(torch.from_numpy(prepared))["embedding"]
        # channel order: the embedding is the model's forecast from (signal, trend, seasonal, residual)
        direct = backbone.model.forecast(*torch.from_numpy(prepared).unbind(1))
    assert embedding.shape == (2, CONFIG.embedding_dim)
    assert torch.isfinite(embedding).all()
    torch.testing.assert_close(embedding, direct)


def test_longer_records_average_their_windows(backbone):
    window = np.random.default_rng(1).standard_normal((2, 1, SEQ_LEN)).astype(np.float32)
    with torch.no_grad():
        once = backbone(torch.from_numpy(backbone.preprocess(window)))["embedding"]
        twice = backbone(torch.from_numpy(backbone.preprocess(np.concatenate([window, window], -1))))["embedding"]
    torch.testing.assert_close(twice, once, atol=1e-5, rtol=1e-5)


def test_forward_refuses_a_signal_without_its_components(backbone):
    with pytest.raises(ValueError, match="preprocess"):
        backbone(torch.zeros(2, 3, SEQ_LEN))


def test_preprocess_z_scores_and_decomposes_additively(backbone):
    """Offset, drift and a period-50 wave: the signal is z-scored and STL splits it exactly into its parts."""
    t = np.arange(SEQ_LEN)
    wave = np.sin(2 * np.pi * t / 50)
    signal = (3.0 + 0.01 * t + 0.5 * wave).astype(np.float32)[None, None]
    scored, trend, seasonal, resid = backbone.preprocess(signal)[0].astype(np.float64)
    assert abs(scored.mean()) < 1e-6 and abs(scored.std() - 1) < 1e-5
    np.testing.assert_allclose(trend + seasonal + resid, scored, atol=1e-5)
    assert np.corrcoef(seasonal, wave)[0, 1] > 0.99
    assert np.corrcoef(trend, t)[0, 1] > 0.99


def test_flat_lead_is_centred_not_divided_by_zero(backbone):
    prepared = backbone.preprocess(np.full((1, 1, SEQ_LEN), 2.0, np.float32))
    assert np.isfinite(prepared).all() and np.abs(prepared).max() < 1e-6


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda sd: sd.pop("in_layer_season.bias"), "in_layer_season.bias"),
        (lambda sd: sd.__setitem__("ln_f.weight", sd.pop(GPT2 + "ln_f.weight")), GPT2 + "ln_f.weight"),
        (lambda sd: sd.__setitem__("out_layer_noise.weight", torch.zeros(96, 8)), "out_layer_noise.weight"),
        (lambda sd: sd.pop("in_layer_trend.weight"), "in_layer_trend.weight"),
    ],
    ids=["missing", "renamed", "reshaped", "missing-sizing-key"],
)
def test_mismatching_checkpoint_is_refused_naming_the_key(tmp_path, change, key):
    state_dict = small_state_dict()
    change(state_dict)
    path = tmp_path / "bad.pth"
    torch.save(state_dict, path)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_tempo(path)


def test_checkpoint_of_another_horizon_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(TEMPO(d_model=24, gpt_layers=1, pred_len=48).state_dict(), path)
    with pytest.raises(CheckpointError, match="96"):
        tempo(path)


def test_older_peft_key_layout_loads_to_the_same_model(tmp_path, backbone):
    """peft < 0.7 saved `c_attn.weight` (not `c_attn.base_layer.weight`); old transformers saved mask buffers."""
    old = {key.replace("c_attn.base_layer.", "c_attn."): value for key, value in small_state_dict().items()}
    old[GPT2 + "h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
    old[GPT2 + "h.0.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(old, tmp_path / "old.pth")
    series = torch.randn(4, 2, SEQ_LEN).unbind(1)
    with torch.no_grad():
        got = load_tempo(tmp_path / "old.pth").forecast(series[0], series[1], series[1], series[0])
        expected = backbone.model.forecast(series[0], series[1], series[1], series[0])
    torch.testing.assert_close(got, expected)


def test_full_model_has_the_published_keys_and_shapes():
    published = json.loads(need_shared(FIXTURES / "tempo" / "keys_full.json").read_text())
    with torch.device("meta"):
        model = TEMPO()
    built = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert built == {entry["key"]: entry["shape"] for entry in published["keys"]}
    assert sum(p.numel() for p in model.parameters()) == published["n_float_elements"]
