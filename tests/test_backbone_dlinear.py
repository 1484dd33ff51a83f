"""EnECG's DLinear backbone: its checkpoint format, its input, and its self-supervised pretraining."""

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from pipeline.stage_one.backbones import build_backbone, get_config, get_pretrainer
from pipeline.stage_one.backbones.dlinear import DLinear
from pipeline.errors import CheckpointError, ManifestError
from tests.conftest import DATA, FIXTURES, need_shared

SMALL_PRETRAIN = {"epochs": 8, "max_shift": 10, "batch_size": 32, "eval_windows": 128, "device": "cpu"}


def native_checkpoint(path, drop=None, reshape=None):
    """EnECG's container, written by hand: a bare OrderedDict of its 4 keys saved by torch.save."""
    generator = torch.Generator().manual_seed(0)
    shapes = {"Linear_Seasonal.weight": (1, 500), "Linear_Seasonal.bias": (1,)}
    shapes |= {"Linear_Trend.weight": (1, 500), "Linear_Trend.bias": (1,)}
    if reshape:
        shapes[reshape] = (1, 400)
    state = OrderedDict(
        (key, 0.05 * torch.randn(shape, generator=generator)) for key, shape in shapes.items() if key != drop
    )
    torch.save(state, path)
    return state


def reference_forecast_parts(state, series):
    """The seasonal and trend outputs in numpy: the mean of a 1001-wide window over the edge-padded series."""
    padded = np.pad(series.astype(np.float64), 500, mode="edge")
    trend = np.convolve(padded, np.ones(1001) / 1001, mode="valid")
    weight = {key: value.double().numpy() for key, value in state.items()}
    seasonal_out = weight["Linear_Seasonal.weight"][0] @ (series - trend) + weight["Linear_Seasonal.bias"][0]
    trend_out = weight["Linear_Trend.weight"][0] @ trend + weight["Linear_Trend.bias"][0]
    return seasonal_out, trend_out


def sine_records(count, leads=2, seed=0):
    """[count, leads, 500] sine waves at 50 Hz (0.5-3 Hz, random phase and amplitude), in millivolts."""
    rng = np.random.default_rng(seed)
    time = np.arange(500) / 50
    shape = (count, leads, 1)
    frequency, phase = rng.uniform(0.5, 3, shape), rng.uniform(0, 2 * np.pi, shape)
    waves = rng.uniform(0.2, 2, shape) * np.sin(2 * np.pi * frequency * time + phase)
    return waves.astype(np.float32)


def test_registered_as_a_pretrainable_forecaster():
    config = get_config("dlinear")
    assert (config.embedding_dim, config.checkpoint_file, config.pretrainable) == (24, "checkpoint.pth", True)
    assert (config.spec.sampling_rate, config.spec.samples, len(config.spec.leads)) == (50.0, 500, 12)
    assert config.native_outputs == ("forecast",)
    assert callable(get_pretrainer("dlinear"))


def test_native_checkpoint_gives_each_leads_seasonal_and_trend_outputs(tmp_path):
    path = tmp_path / "checkpoint.pth"
    state = native_checkpoint(path)
    model = build_backbone("dlinear", path)
    x = torch.from_numpy(model.preprocess(np.random.default_rng(1).normal(size=(2, 12, 500)).astype(np.float32)))
    with torch.no_grad():
        out = model(x)
    assert out["embedding"].shape == (2, 24) and out["forecast"].shape == (2, 12)
    assert torch.isfinite(out["embedding"]).all()
    # lead 3 of record 1 against an independent numpy DLinear (kernel 1001 > 500 samples, edge padding)
    expected = reference_forecast_parts(state, x[1, 3].double().numpy())
    np.testing.assert_allclose(out["embedding"][1, 6:8].numpy(), expected, atol=1e-5)
    torch.testing.assert_close(out["forecast"], out["embedding"].reshape(2, 12, 2).sum(-1))


def test_longer_records_average_their_windows(tmp_path):
    native_checkpoint(tmp_path / "checkpoint.pth")
    model = build_backbone("dlinear", tmp_path / "checkpoint.pth")
    x = torch.randn(2, 12, 1000)
    with torch.no_grad():
        whole = model(x)["embedding"]
        halves = (model(x[..., :500])["embedding"] + model(x[..., 500:])["embedding"]) / 2
    torch.testing.assert_close(whole, halves)


def test_published_checkpoint_loads_and_embeds():
    path = need_shared(DATA / "checkpoints" / "enecg-dlinear" / "checkpoint.pth")
    model = build_backbone("dlinear", path)
    signals = (np.random.default_rng(2).normal(size=(2, 12, 500)) * 0.3 + 0.1).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(model.preprocess(signals)))
    assert out["embedding"].shape == (2, 24) and torch.isfinite(out["embedding"]).all()
    assert out["embedding"].std() > 0


@pytest.mark.parametrize(
    ("drop", "reshape", "key"),
    [("Linear_Trend.bias", None, "Linear_Trend.bias"), (None, "Linear_Seasonal.weight", "Linear_Seasonal.weight")],
)
def test_mismatched_checkpoint_is_refused_naming_the_key(tmp_path, drop, reshape, key):
    path = tmp_path / "checkpoint.pth"
    native_checkpoint(path, drop=drop, reshape=reshape)
    with pytest.raises(CheckpointError, match=key):
        build_backbone("dlinear", path)


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(1, 500)], tmp_path / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="not the bare state_dict"):
        build_backbone("dlinear", tmp_path / "checkpoint.pth")


def test_full_published_key_list_matches():
    published = json.loads(need_shared(FIXTURES / "enecg-dlinear" / "keys_full.json").read_text())["keys"]
    with torch.device("meta"):
        model = DLinear()
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert {k["key"]: tuple(k["shape"]) for k in published} == ours


def test_preprocess_zscores_the_whole_record_not_each_lead(tmp_path):
    native_checkpoint(tmp_path / "checkpoint.pth")
    model = build_backbone("dlinear", tmp_path / "checkpoint.pth")
    signals = np.random.default_rng(3).normal(size=(2, 12, 500)).astype(np.float32) * 0.5
    signals[:, 0] += 4.0  # one lead offset: a per-lead z-score would remove it
    signals[1, 5, 7] = np.nan
    out = model.preprocess(signals)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1, atol=1e-5)
    assert out[:, 0].mean() > 2 and np.isfinite(out).all()
    assert (model.preprocess(np.full((1, 12, 500), 0.7, np.float32)) == 0).all()  # flat: centred only


def test_pretraining_learns_to_forecast_sines_and_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "dlinear" / "checkpoint.pth"
    summary = get_pretrainer("dlinear")(sine_records(60), out, SMALL_PRETRAIN, 0)
    # 120 series (60 records x 2 leads) x 10 shifts; the loss is reported on whole series held out of training
    # (128 pairs asked for: 13 series), so it measures forecasting sines the model never saw
    assert summary["windows"] == 107 * 10 and summary["held_out_windows"] == 13 * 10
    assert summary["final_loss"] < 0.25 * summary["initial_loss"], summary
    state = torch.load(out, weights_only=True)
    assert isinstance(state, OrderedDict) and sorted(state) == sorted(DLinear().state_dict())
    assert [p.name for p in out.parent.iterdir()] == ["checkpoint.pth"]  # no temporary file left
    assert build_backbone("dlinear", out)(torch.randn(1, 12, 500))["embedding"].shape == (1, 24)


def test_pretraining_is_deterministic_given_the_seed(tmp_path):
    pretrain = get_pretrainer("dlinear")
    settings = {**SMALL_PRETRAIN, "epochs": 2}
    states = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        pretrain(sine_records(4), tmp_path / name, settings, seed)
        states.append(torch.load(tmp_path / name, weights_only=True))
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert not torch.equal(states[0]["Linear_Trend.weight"], states[2]["Linear_Trend.weight"])


def test_unknown_pretrain_setting_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="epoch"):
        get_pretrainer("dlinear")(sine_records(2), tmp_path / "x.pth", {"epoch": 3}, 0)
