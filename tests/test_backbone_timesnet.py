"""EnECG's TimesNet backbone: its checkpoint format, batch-independent embeddings, and its pretraining."""

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from pipeline.stage_one.backbones import build_backbone, get_config, get_pretrainer
from pipeline.stage_one.backbones.timesnet import TimesNet
from pipeline.errors import CheckpointError
from tests.conftest import FIXTURES, need_shared
from tests.test_backbone_dlinear import sine_records


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random full-size TimesNet saved in EnECG's container: torch.save of the bare state_dict (pe included)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("timesnet") / "checkpoint.pth"
    torch.save(TimesNet().state_dict(), path)
    return path


def test_registered_as_a_pretrainable_forecaster():
    config = get_config("timesnet")
    assert (config.embedding_dim, config.checkpoint_file, config.pretrainable) == (192, "checkpoint.pth", True)
    assert (config.spec.sampling_rate, config.spec.samples, len(config.spec.leads)) == (50.0, 500, 12)
    assert callable(get_pretrainer("timesnet"))


def test_native_checkpoint_embeds_every_lead_independently_of_the_batch(checkpoint):
    model = build_backbone("timesnet", checkpoint)
    signals = np.random.default_rng(0).normal(size=(2, 12, 500)).astype(np.float32)
    x = torch.from_numpy(model.preprocess(signals))
    with torch.no_grad():
        out = model(x)
        alone = model(x[1:])
    assert out["embedding"].shape == (2, 192) and out["forecast"].shape == (2, 12)
    assert torch.isfinite(out["embedding"]).all() and torch.isfinite(out["forecast"]).all()
    torch.testing.assert_close(out["embedding"][1:], alone["embedding"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["forecast"][1:], alone["forecast"], atol=1e-5, rtol=1e-5)


def test_per_series_periods_equal_running_each_series_alone():
    """The batched per-series mode reproduces the reference run one series at a time (batch of one).

    Run in float64: this checks the grouping logic, not float32 rounding. In float32 the batch of 4 and the
    batches of 1 sum in different orders (GEMM/conv blocking depends on the batch shape), and the small random
    net amplifies that: measured over seeds 0-99 (torch 2.13 CPU), the largest difference was 8.5e-5 with one
    thread (median 8.5e-6; seed 1: 1.5e-5, over float32's default atol 1e-5) and 6.6e-6 with two; the
    periods and their float16 weights were identical in every case, so this is rounding alone. In float64
    the same order effects stay below 7e-14 (one or two threads), far inside float64's default tolerance
    (rtol 1e-7, atol 1e-7), while a wrong grouping would differ by ~0.1.
    """
    torch.manual_seed(1)
    net = TimesNet(d_model=4, d_ff=4, num_kernels=2, e_layers=2).eval().double()
    time = torch.arange(500, dtype=torch.float64) / 50
    series = torch.stack([torch.sin(2 * torch.pi * f * time) for f in (0.7, 1.3, 2.9, 0.7)])
    series = series + 0.1 * torch.randn(4, 500, dtype=torch.float64)
    with torch.no_grad():
        together, hidden = net(series, per_series_periods=True)
        one_by_one = [net(s[None]) for s in series]
        shared, _ = net(series)
    torch.testing.assert_close(together, torch.cat([f for f, _ in one_by_one]))
    torch.testing.assert_close(hidden, torch.cat([h for _, h in one_by_one]))
    assert not torch.allclose(shared, together)  # the reference's batch-wide periods differ


def test_period_ranking_keeps_only_the_real_part_in_float16():
    """A pure sine's |Re rFFT| is 0 at phase pi/2 (x = cos): the period search must follow Re, not |rFFT|."""
    block = TimesNet(d_model=2, d_ff=2, num_kernels=1, e_layers=1, top_k=1).model[0]
    time = torch.arange(501, dtype=torch.float64)
    x = torch.stack([torch.cos(2 * torch.pi * 25 * time / 501), 3 * torch.sin(2 * torch.pi * 10 * time / 501)], -1)
    periods, weights = block.periods(x[None].float(), per_series=True)
    assert periods.tolist() == [[501 // 25]] and weights.dtype == torch.float16


def test_mismatched_checkpoint_is_refused_naming_the_key(tmp_path, checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    missing = OrderedDict((k, v) for k, v in state.items() if k != "enc_embedding.position_embedding.pe")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="enc_embedding.position_embedding.pe"):
        build_backbone("timesnet", tmp_path / "missing.pth")
    state["predict_linear.weight"] = torch.zeros(251, 250)
    torch.save(state, tmp_path / "reshaped.pth")
    with pytest.raises(CheckpointError, match="predict_linear.weight"):
        build_backbone("timesnet", tmp_path / "reshaped.pth")


def test_full_published_key_list_matches():
    published = json.loads(need_shared(FIXTURES / "enecg-timesnet" / "keys_full.json").read_text())["keys"]
    with torch.device("meta"):
        model = TimesNet()
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert {k["key"]: tuple(k["shape"]) for k in published} == ours


def test_preprocess_zscores_the_whole_record(checkpoint):
    model = build_backbone("timesnet", checkpoint)
    signals = np.random.default_rng(3).normal(size=(2, 12, 500)).astype(np.float32) + np.arange(12)[:, None]
    out = model.preprocess(signals)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1, atol=1e-5)
    assert out[:, 11].mean() > out[:, 0].mean() + 2  # lead offsets survive: not per lead


def test_pretraining_learns_is_deterministic_and_writes_a_loadable_checkpoint(tmp_path):
    settings = {"epochs": 3, "max_shift": 2, "batch_size": 8, "eval_windows": 8, "device": "cpu"}
    pretrain = get_pretrainer("timesnet")
    first = pretrain(sine_records(2), tmp_path / "a" / "checkpoint.pth", settings, 0)
    pretrain(sine_records(2), tmp_path / "b" / "checkpoint.pth", settings, 0)
    assert first["final_loss"] < 0.5 * first["initial_loss"], first
    a = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)
    assert list(a) == list(TimesNet().state_dict()) and all(torch.equal(a[k], b[k]) for k in a)
    model = build_backbone("timesnet", tmp_path / "a" / "checkpoint.pth")
    with torch.no_grad():
        assert model(torch.randn(1, 12, 500))["embedding"].shape == (1, 192)
