"""EnECG's DLinear and TimesNet at any size: a user's own EnECG-trained variant (a bare state_dict of other shapes)
loads through build_backbone at the sizes its tensors determine, with the rest from checkpoint_config.json
beside it; a checkpoint whose keys or shapes disagree is still refused with the keys listed."""

from __future__ import annotations

import json
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch

from pipeline.errors import CheckpointError
from pipeline.stage_one.backbones import build_backbone, get_config
from pipeline.stage_one.backbones import dlinear as dlinear_module
from pipeline.stage_one.backbones import timesnet as timesnet_module
from pipeline.stage_one.backbones.dlinear import DLinear
from pipeline.stage_one.backbones.timesnet import TimesNet
from pipeline.stage_one.extract import backbone_inputs


def save(state: dict, folder, config: dict | None = None):
    """torch.save of the bare state_dict as EnECG saves it, and a checkpoint_config.json beside it if given."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "checkpoint.pth"
    torch.save(OrderedDict(state), path)
    if config is not None:
        (folder / "checkpoint_config.json").write_text(json.dumps(config))
    return path


def random_state(model: torch.nn.Module, seed: int = 0) -> OrderedDict:
    """The model's state_dict with every float tensor redrawn (so that no zero bias hides a swapped key)."""
    generator = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (key, 0.05 * torch.randn(value.shape, generator=generator) if key != "enc_embedding.position_embedding.pe" else value)
        for key, value in model.state_dict().items()
    )


def corpus_records(count: int = 2, seed: int = 1) -> np.ndarray:
    """[count, 12, 5000] corpus records (500 Hz x 10 s, mV)."""
    return np.random.default_rng(seed).normal(size=(count, 12, 5000)).astype(np.float32)


# --- DLinear -------------------------------------------------------------------------------------------------


def test_dlinear_seq_len_336_loads_at_its_size_and_is_fed_10_s_at_33_6_hz(tmp_path):
    state = random_state(DLinear(seq_len=336))
    model = build_backbone("dlinear", save(state, tmp_path / "dlinear"))
    assert (model.net.seq_len, model.net.pred_len, model.net.kernel_size) == (336, 1, 1001)
    assert (model.config.spec.samples, model.config.spec.sampling_rate, model.config.embedding_dim) == (336, 33.6, 24)
    assert model.checkpoint_config == {"seq_len": 336, "pred_len": 1, "kernel_size": 1001, "sampling_rate": 33.6}
    inputs = torch.from_numpy(backbone_inputs(corpus_records(), 500.0, list(model.config.spec.leads), model))
    assert inputs.shape == (2, 12, 336)  # extract resamples by the backbone's own spec
    with torch.no_grad():
        out = model(inputs)
        seasonal, trend = model.net(inputs[1, 4][None])
    assert out["embedding"].shape == (2, 24) and out["forecast"].shape == (2, 12)
    torch.testing.assert_close(out["embedding"][1, 8:10], torch.cat([seasonal[0], trend[0]]))
    torch.testing.assert_close(out["forecast"], out["embedding"].reshape(2, 12, 2).sum(-1))


def test_dlinear_pred_len_and_kernel_from_the_checkpoint_config(tmp_path):
    reference = DLinear(seq_len=250, pred_len=2, kernel_size=25)
    state = random_state(reference, seed=3)
    reference.load_state_dict(state)
    path = save(state, tmp_path / "dlinear", {"kernel_size": 25, "seq_len": 250, "moving_avg": 25, "enc_in": 12})
    model = build_backbone("dlinear", path)
    assert (model.net.seq_len, model.net.pred_len, model.net.kernel_size) == (250, 2, 25)
    assert (model.config.spec.samples, model.config.spec.sampling_rate, model.config.embedding_dim) == (250, 25.0, 48)
    x = torch.randn(2, 12, 500)  # two windows per record, averaged
    with torch.no_grad():
        out = model(x)
        seasonal, trend = reference(x.reshape(2, 12, 2, 250).permute(0, 2, 1, 3).reshape(-1, 250))
    parts = torch.stack([seasonal, trend], dim=1).reshape(2, 2, 12, 2, 2).mean(dim=1)  # [B, leads, part, step]
    assert out["embedding"].shape == (2, 48) and out["forecast"].shape == (2, 24)
    torch.testing.assert_close(out["embedding"], parts.reshape(2, 48))
    torch.testing.assert_close(out["forecast"], parts.sum(dim=2).reshape(2, 24))


def test_dlinear_published_size_keeps_the_registered_config(tmp_path):
    model = build_backbone("dlinear", save(random_state(DLinear()), tmp_path / "dlinear"))
    assert model.config == get_config("dlinear") and model.config.embedding_dim == 24


@pytest.mark.parametrize(
    ("tamper", "keys"),
    [
        (lambda state: state.pop("Linear_Trend.bias"), [r"missing keys \(1\): Linear_Trend\.bias"]),
        (lambda state: state.__setitem__("Linear_Trend.weight", torch.zeros(1, 400)),
         [r"Linear_Trend\.weight: checkpoint \(1, 400\) vs model \(1, 336\)", r"seq_len 336 \(from Linear_Seasonal\.weight \(1, 336\)\)"]),
        (lambda state: state.__setitem__("Linear_Extra.weight", torch.zeros(1, 336)), [r"unexpected keys \(1\): Linear_Extra\.weight"]),
    ],
    ids=["missing_key", "wrong_shape", "unexpected_key"],
)
def test_dlinear_tampered_checkpoint_is_refused_with_the_keys_listed(tmp_path, tamper, keys):
    state = random_state(DLinear(seq_len=336))
    tamper(state)
    with pytest.raises(CheckpointError) as error:
        build_backbone("dlinear", save(state, tmp_path / "dlinear"))
    for key in keys:
        assert any(re.search(key, line) for line in str(error.value).splitlines()), str(error.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kernel_size": 24}, r"kernel_size must be an odd whole number"),
        ({"kernel_size": "25"}, r"kernel_size must be an odd whole number"),
        ({"seq_len": 500}, r"seq_len is 500, but the checkpoint's tensors give seq_len 336 \(from Linear_Seasonal\.weight"),
        ({"top-k": 3}, r"unknown settings \['top-k'\]"),
        ({"sampling_rate": 0}, r"sampling_rate must be a rate in Hz"),
        ([1, 2], r"expected a JSON object"),
    ],
)
def test_dlinear_bad_checkpoint_config_is_refused_naming_the_file_and_key(tmp_path, config, message):
    path = save(random_state(DLinear(seq_len=336)), tmp_path / "dlinear", config)
    with pytest.raises(CheckpointError, match=message) as error:
        build_backbone("dlinear", path)
    assert "checkpoint_config.json" in str(error.value)


def test_dlinear_sampling_rate_setting_and_the_builders_config_keyword(tmp_path):
    path = save(random_state(DLinear(seq_len=336)), tmp_path / "dlinear", {"sampling_rate": 50})
    model = build_backbone("dlinear", path)
    assert (model.config.spec.samples, model.config.spec.sampling_rate) == (336, 50.0)
    given = dlinear_module.build(path, config={"kernel_size": 51})  # replaces the file's settings
    assert (given.net.kernel_size, given.config.spec.sampling_rate) == (51, 33.6)


# --- TimesNet ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_timesnet(tmp_path_factory):
    """A TimesNet with d_model 32, d_ff 64, e_layers 3 (4 kernels, top-5 periods), saved with top_k in its config."""
    torch.manual_seed(0)
    reference = TimesNet(d_model=32, d_ff=64, e_layers=3, num_kernels=4, top_k=5).eval()
    path = save(reference.state_dict(), tmp_path_factory.mktemp("timesnet") / "timesnet", {"top_k": 5, "d_model": 32, "dropout": 0.1})
    return path, reference


def test_timesnet_d_model_32_d_ff_64_e_layers_3_loads_at_its_size(wide_timesnet):
    path, reference = wide_timesnet
    model = build_backbone("timesnet", path)
    assert model.checkpoint_config == {
        "seq_len": 500, "pred_len": 1, "d_model": 32, "d_ff": 64, "e_layers": 3, "num_kernels": 4,
        "time_features": 4, "max_positions": 5000, "top_k": 5, "sampling_rate": 50.0,
    }
    assert model.config.embedding_dim == 32 * 12 and model.config.spec == get_config("timesnet").spec
    assert all(block.top_k == 5 for block in model.net.model)
    x = torch.from_numpy(model.preprocess(np.random.default_rng(2).normal(size=(2, 12, 500)).astype(np.float32)))
    with torch.no_grad():
        out = model(x)
        forecast, hidden = reference(x[1, 7][None], per_series_periods=True)
    assert out["embedding"].shape == (2, 384) and out["forecast"].shape == (2, 12)
    assert torch.isfinite(out["embedding"]).all()
    torch.testing.assert_close(out["embedding"].reshape(2, 12, 32)[1, 7], hidden.mean(dim=1)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["forecast"][1, 7], forecast[0, 0], atol=1e-5, rtol=1e-5)


def test_timesnet_top_k_defaults_to_the_published_3_and_the_builder_takes_a_config(tmp_path, wide_timesnet):
    _, reference = wide_timesnet
    bare = save(reference.state_dict(), tmp_path / "bare")  # no checkpoint_config.json
    assert build_backbone("timesnet", bare).checkpoint_config["top_k"] == 3
    assert timesnet_module.build(bare, config={"top_k": 2}).checkpoint_config["top_k"] == 2
    with pytest.raises(CheckpointError, match=r"top_k must be a whole number of periods from 1 to 250"):
        timesnet_module.build(bare, config={"top_k": 251})
    with pytest.raises(CheckpointError, match=r"e_layers is 2, but the checkpoint's tensors give e_layers 3 \(from keys model\.0-2\.\*\)"):
        timesnet_module.build(bare, config={"e_layers": 2})


def test_timesnet_seq_len_and_pred_len_from_predict_linear(tmp_path):
    torch.manual_seed(1)
    reference = TimesNet(seq_len=250, pred_len=2, d_model=8, d_ff=8, e_layers=2, num_kernels=2).eval()
    model = build_backbone("timesnet", save(reference.state_dict(), tmp_path / "timesnet"))
    settings = model.checkpoint_config
    assert (settings["seq_len"], settings["pred_len"], settings["d_model"], settings["e_layers"], settings["num_kernels"]) == (250, 2, 8, 2, 2)
    assert (model.config.spec.samples, model.config.spec.sampling_rate, model.config.embedding_dim) == (250, 25.0, 96)
    inputs = torch.from_numpy(backbone_inputs(corpus_records(), 500.0, list(model.config.spec.leads), model))
    assert inputs.shape == (2, 12, 250)
    with torch.no_grad():
        out = model(inputs)
        forecast, _ = reference(inputs[0, 2][None], per_series_periods=True)
    assert out["embedding"].shape == (2, 96) and out["forecast"].shape == (2, 24)
    torch.testing.assert_close(out["forecast"].reshape(2, 12, 2)[0, 2], forecast[0], atol=1e-5, rtol=1e-5)


def test_timesnet_published_size_keeps_the_registered_config(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("timesnet", save(TimesNet().state_dict(), tmp_path / "timesnet"))
    assert model.config == get_config("timesnet") and model.config.embedding_dim == 192


def drop(prefix):
    return lambda state: [state.pop(key) for key in [key for key in state if key.startswith(prefix)]]


@pytest.mark.parametrize(
    ("tamper", "keys"),
    [
        (drop("model.2.conv.2.kernels.1.bias"), [r"missing keys \(1\): model\.2\.conv\.2\.kernels\.1\.bias"]),
        (lambda state: state.__setitem__("layer_norm.weight", torch.ones(16)),
         [r"layer_norm\.weight: checkpoint \(16,\) vs model \(32,\)", r"d_model 32 \(from enc_embedding\.value_embedding\.tokenConv\.weight"]),
        (lambda state: state.__setitem__("model.1.conv.0.kernels.3.weight", torch.zeros(64, 32, 5, 5)),
         [r"model\.1\.conv\.0\.kernels\.3\.weight: checkpoint \(64, 32, 5, 5\) vs model \(64, 32, 7, 7\)"]),
        (drop("model.1."), [r"missing keys \(16\): model\.1\.conv\.0\.kernels\.0\.bias, model\.1\.conv\.0\.kernels\.0\.weight"]),
        (lambda state: state.__setitem__("model.7.conv.0.kernels.0.weight", torch.zeros(1)),
         [r"missing keys \(\d+\): model\.3\.conv", r"up to N = 7, none for N = 3, 4, 5, 6"]),
        (lambda state: state.__setitem__("predict_linear.bias", torch.zeros(500)),
         [r"predict_linear\.bias: checkpoint \(500,\) vs model \(501,\)", r"seq_len 500 \(from predict_linear\.weight \(501, 500\)\)"]),
    ],
    ids=["missing_key", "wrong_shape", "wrong_kernel_shape", "missing_block", "block_beyond_the_others", "inconsistent_predict_linear"],
)
def test_timesnet_tampered_checkpoint_is_refused_with_the_keys_listed(tmp_path, wide_timesnet, tamper, keys):
    path, _ = wide_timesnet
    state = torch.load(path, weights_only=True)
    tamper(state)
    with pytest.raises(CheckpointError) as error:
        build_backbone("timesnet", save(state, tmp_path / "timesnet", {"top_k": 5}))
    for key in keys:
        assert re.search(key, str(error.value)), str(error.value)


def test_a_state_dict_of_non_tensors_is_refused(tmp_path):
    path = save({"Linear_Seasonal.weight": [[0.0] * 336]}, tmp_path / "dlinear")
    with pytest.raises(CheckpointError, match=r"not a state_dict of tensors: keys \['Linear_Seasonal\.weight'\]"):
        build_backbone("dlinear", path)
