"""ECGFounder: loading the released container, refusing wrong files, preprocessing, published key list."""

import json
import pickle
import types
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.stage_one.backbones import LEADS_12, build_backbone, get_config
from pipeline.stage_one.backbones.ecgfounder import (
    PUBLISHED_1_LEAD,
    PUBLISHED_12_LEAD,
    ECGFounder,
    ECGFounder1Lead,
    Net1D,
    Net1DShape,
)
from pipeline.errors import CheckpointError
from tests.conftest import FIXTURES, need_shared

SMALL = Net1DShape(in_channels=12, base_filters=16, filters=(16, 32, 48), blocks=(2, 1, 2), n_classes=5)


class _Numpy1Pickler(pickle._Pickler):
    """Names numpy's scalar reconstructor as numpy 1.x did (`numpy.core.multiarray`), as the released
    files (saved under numpy 1.26) do; numpy 2 would write `numpy._core.multiarray`."""

    def save_global(self, obj, name=None):
        if obj is np.float64(0).__reduce__()[0]:  # numpy's scalar reconstructor
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


NUMPY1_PICKLE = types.ModuleType("numpy1_pickle")
NUMPY1_PICKLE.Pickler = _Numpy1Pickler


def native_state_dict(shape: Net1DShape) -> dict[str, torch.Tensor]:
    """Random weights plus the BatchNorm entries the training graph saved (running stats included)."""
    torch.manual_seed(0)
    net = Net1D(shape)
    state = dict(net.state_dict())
    for key, size in net.unused_keys().items():
        state[key] = torch.tensor(7) if key.endswith("num_batches_tracked") else torch.rand(size)
    return state


def save_native(path, state_dict):
    """The released container: the training loop's dict with an Adam state (written out by hand:
    building a torch optimizer costs seconds of imports), a ReduceLROnPlateau state and a numpy float64
    `val_auroc`, pickled as under numpy 1.x."""
    weights = [value for value in state_dict.values() if value.is_floating_point()]
    adam_state = {
        index: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(value), "exp_avg_sq": torch.zeros_like(value)}
        for index, value in enumerate(weights)
    }
    adam_group = dict(
        lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, maximize=False, foreach=None,
        capturable=False, differentiable=False, fused=None, decoupled_weight_decay=False,
        params=list(range(len(weights))),
    )  # fmt: skip
    scheduler = dict(
        factor=0.1, min_lrs=[0], patience=10, cooldown=0, eps=1e-08, last_epoch=3, _last_lr=[1e-3],
        mode_worse=-float("inf"), mode="max", threshold=1e-4, threshold_mode="rel", best=0.91,
        cooldown_counter=0, num_bad_epochs=0,
    )  # fmt: skip
    checkpoint = {
        "epoch": 3,
        "step": 1200,
        "state_dict": state_dict,
        "optimizer": {"state": adam_state, "param_groups": [adam_group]},
        "scheduler": scheduler,
        "val_auroc": np.float64(0.91),
    }
    torch.save(checkpoint, path, pickle_module=NUMPY1_PICKLE)
    return path


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return save_native(tmp_path_factory.mktemp("ecgfounder") / "12_lead_ECGFounder.pth", native_state_dict(SMALL))


def test_container_needs_the_numpy_allowlist(small_checkpoint):
    """The test file really carries the numpy-1 scalar that plain weights_only loading refuses."""
    with pytest.raises(pickle.UnpicklingError, match="numpy.core.multiarray.scalar"):
        torch.load(small_checkpoint, weights_only=True)


@pytest.mark.parametrize("backbone", [ECGFounder, ECGFounder1Lead])
def test_builds_and_embeds(tmp_path, small_checkpoint, backbone):
    """The builder loads the container; 20 s records give the mean of their two 10 s windows."""
    leads = len(backbone.config.spec.leads)
    if leads == 12:
        path = small_checkpoint
    else:
        path = save_native(tmp_path / "1_lead_ECGFounder.pth", native_state_dict(replace(SMALL, in_channels=1)))
    model = backbone(path).eval()
    x = torch.randn(2, leads, 2 * backbone.config.spec.samples)
    with torch.no_grad():
        out = model(x)
        halves = [model(x[..., i * 5000 : (i + 1) * 5000])["embedding"] for i in range(2)]
    assert out["embedding"].shape == (2, SMALL.filters[-1]) and out["logits"].shape == (2, SMALL.n_classes)
    assert torch.isfinite(out["embedding"]).all() and torch.isfinite(out["logits"]).all()
    torch.testing.assert_close(out["embedding"], (halves[0] + halves[1]) / 2)


@pytest.mark.parametrize(
    "change, key",
    [
        ("drop", "stage_list.1.block_list.0.conv2.conv.bias"),
        ("rename", "stage_list.2.block_list.1.se_fc1.weight"),
        ("reshape", "stage_list.0.block_list.1.se_fc2.weight"),
        ("rename", "dense.weight"),
        ("drop", "stage_list.2.block_list.0.bn1.running_var"),  # unused, but the published file has it
        ("reshape", "first_bn.weight"),
    ],
)
def test_refuses_wrong_keys(tmp_path, change, key):
    state = native_state_dict(SMALL)
    value = state.pop(key)
    if change == "rename":
        state[f"module.{key}"] = value  # as nn.DataParallel would save it
    elif change == "reshape":
        state[key] = value[..., :-1]
    path = save_native(tmp_path / "bad.pth", state)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        ECGFounder(path)


def test_refuses_other_files(tmp_path, small_checkpoint):
    with pytest.raises(CheckpointError, match="ecgfounder-1lead"):
        ECGFounder1Lead(small_checkpoint)  # a 12-lead file for the lead-I backbone
    torch.save(native_state_dict(SMALL), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        ECGFounder(tmp_path / "bare.pth")


def test_preprocess(small_checkpoint):
    """Mains tone, DC offset and baseline wander go; one z-score over the record keeps lead ratios."""
    model = ECGFounder(small_checkpoint)
    t = np.arange(5000) / 500.0
    clean = np.sin(2 * np.pi * 10 * t)
    noisy = clean + 3.0 + 0.5 * np.sin(2 * np.pi * 50 * t) + np.sin(2 * np.pi * 0.2 * t)
    gains = np.linspace(0.5, 2.0, 12)[:, None]
    out = model.preprocess((np.stack([clean, noisy])[:, None, :] * gains).astype(np.float32))
    assert out.shape == (2, 12, 5000) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1, atol=1e-4)
    np.testing.assert_allclose(out[0].std(axis=1) / out[0, 0].std(), gains[:, 0] / 0.5, rtol=1e-4)
    inner = slice(250, -250)  # filtfilt edge transients
    assert np.abs(out[0, :, inner] - out[1, :, inner]).max() < 0.05


@pytest.mark.parametrize(
    "fixture, shape", [("ecgfounder-12lead", PUBLISHED_12_LEAD), ("ecgfounder-1lead", PUBLISHED_1_LEAD)]
)
def test_published_key_list(fixture, shape):
    """The full published model (built on the meta device) holds exactly the released keys and shapes,
    and reading dims off that key list gives back the published configuration."""
    published = json.loads((need_shared(FIXTURES / fixture) / "keys_full.json").read_text())["keys"]
    published = {entry["key"]: tuple(entry["shape"]) for entry in published}
    with torch.device("meta"):
        net = Net1D(shape)
    ours = {key: tuple(value.shape) for key, value in net.state_dict().items()} | net.unused_keys()
    assert ours == published
    meta = {key: torch.empty(size, device="meta") for key, size in published.items()}
    assert Net1DShape.from_state_dict(meta, "keys_full.json") == shape


def test_fixture_checkpoint_through_registry():
    """Both names are registered; the shared fixture (cuda:0 storages, numpy-1 scalar) loads through
    build_backbone and the wrapper reproduces the reference outputs on its one 10 s window."""
    assert get_config("ecgfounder").spec.leads == LEADS_12 and get_config("ecgfounder-1lead").spec.leads == ("I",)
    assert get_config("ecgfounder").native_outputs == ("logits",) and get_config("ecgfounder").embedding_dim == 1024
    folder = need_shared(FIXTURES / "ecgfounder-12lead")
    model = build_backbone("ecgfounder", folder / "checkpoint.pth")
    with torch.no_grad():
        out = model(torch.from_numpy(np.load(folder / "input.npy")))
    for name, expected in (("embedding", "expected_features"), ("logits", "expected_logits")):
        np.testing.assert_allclose(out[name].numpy(), np.load(folder / f"{expected}.npy"), atol=1e-5, rtol=1e-5)
