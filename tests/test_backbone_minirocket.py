"""MiniRocket: the torch transform reproduces aeon's features, the fit follows aeon's procedure, and the
fitted-parameter checkpoint round-trips through `enecg pretrain` / `build_backbone` or is refused."""

import numpy as np
import pytest
import torch
from aeon.transformations.collection.convolution_based import MiniRocket as AeonMiniRocket

from pipeline.stage_one.backbones import build_backbone, get_config, get_pretrainer
from pipeline.stage_one.backbones.minirocket import (
    KERNEL_LENGTH,
    NUM_KERNELS,
    MiniRocket,
    check_checkpoint,
    checkpoint_from_aeon,
    fit,
    fit_biases,
    valid_only_kernels,
)
from pipeline.errors import CheckpointError


def random_walks(count: int, channels: int, samples: int, seed: int, step: float = 1 / 1024) -> np.ndarray:
    """ECG-like smooth test signals in "millivolts", quantised to `step`: by default to 1/1024, which
    float32 holds exactly, so that aeon's float32 arithmetic is exact too; WFDB-like with step 0.001."""
    steps = np.random.default_rng(seed).standard_normal((count, channels, samples))
    return (np.round(steps.cumsum(-1) * 0.1 / step) * step).astype(np.float32)


def outputs_counted(model: MiniRocket, length: int) -> np.ndarray:
    """Per feature, how many convolution outputs its PPV averages (all, or the valid part only)."""
    counted = []
    for j, (dilation, count) in enumerate(zip(model.dilations, model.features_per_dilation)):
        per_kernel = np.full(NUM_KERNELS, length)
        per_kernel[valid_only_kernels(j)] -= (KERNEL_LENGTH - 1) * dilation
        counted.append(np.repeat(per_kernel, count))
    return np.concatenate(counted)


def aeon_and_ours(step: float) -> tuple[np.ndarray, dict, np.ndarray]:
    """aeon's features of 8 new 3 x 300 series, its fitted parameters as our checkpoint, and the series."""
    train, new = random_walks(20, 3, 300, seed=0, step=step), random_walks(8, 3, 300, seed=1, step=step)
    aeon = AeonMiniRocket(n_kernels=840, random_state=1).fit(train)
    return aeon.transform(new), check_checkpoint(checkpoint_from_aeon(aeon.parameters, 3, 300), "aeon"), new


def test_features_equal_aeon_given_aeon_fit():
    """Where float32 is exact (aeon's arithmetic), aeon's features are exactly ours."""
    reference, checkpoint, new = aeon_and_ours(step=1 / 1024)
    ours = MiniRocket(checkpoint)(torch.from_numpy(new))["embedding"].numpy()
    assert ours.shape == reference.shape == (8, 840)
    np.testing.assert_array_equal(ours, reference)


def test_aeon_differs_only_at_float32_ties():
    """On WFDB-like data (multiples of 0.001 mV, not exact in binary) outputs equal to a bias are common.
    We count exactly; aeon's float32 rounding puts some of those tied outputs on either side. Tolerance:
    aeon's features lie between our exact PPVs with the biases raised and lowered by 1e-5 (float32
    rounding of these sums is ~1e-6; on PTB-XL see benchmarks/minirocket_vs_aeon.md)."""
    reference, checkpoint, new = aeon_and_ours(step=0.001)

    def ours(shift: float) -> np.ndarray:
        model = MiniRocket({**checkpoint, "biases": checkpoint["biases"].double() + shift})
        return model(torch.from_numpy(new))["embedding"].numpy()

    assert (ours(1e-5) <= reference).all() and (reference <= ours(-1e-5)).all()
    assert (ours(0.0) != reference).mean() < 0.01


def test_fit_follows_aeon_procedure():
    """Given aeon's channel subsets and one training example (so aeon's example draw is forced), our bias
    fit gives aeon's biases; dilations, features per dilation and channel-subset sizes follow its rules."""
    signals = random_walks(1, 12, 1000, seed=2)
    reference = checkpoint_from_aeon(AeonMiniRocket(random_state=3).fit(signals).parameters, 12, 1000)
    ours = fit(signals, seed=3)
    assert torch.equal(ours["dilations"], reference["dilations"])
    assert torch.equal(ours["num_features_per_dilation"], reference["num_features_per_dilation"])
    assert ours["biases"].shape == reference["biases"].shape == (get_config("minirocket").embedding_dim,)
    assert MiniRocket(ours)(torch.from_numpy(signals))["embedding"].shape == (1, 9996)
    biases = fit_biases(
        torch.from_numpy(signals),
        reference["dilations"].tolist(),
        reference["num_features_per_dilation"].tolist(),
        reference["channel_mask"],
        torch.zeros(reference["channel_mask"].shape[:2], dtype=torch.long),
    )
    scale = reference["biases"].abs().max()
    torch.testing.assert_close(biases.float(), reference["biases"], rtol=1e-6, atol=1e-7 * scale)
    # channels per kernel: floor(2**U(0, log2 10)), i.e. 1..9 with the same frequencies (2,100 draws each)
    ours_sizes = np.bincount(ours["channel_mask"].sum(-1).flatten(), minlength=10)
    aeon_sizes = np.bincount(reference["channel_mask"].sum(-1).flatten(), minlength=10)
    assert ours_sizes[0] == aeon_sizes[0] == 0 and len(ours_sizes) == len(aeon_sizes) == 10
    assert np.abs(ours_sizes / ours_sizes.sum() - aeon_sizes / aeon_sizes.sum()).max() < 0.04


def test_fit_is_deterministic():
    signals = random_walks(5, 12, 300, seed=4)
    first, again, other = fit(signals, 840, seed=7), fit(signals, 840, seed=7), fit(signals, 840, seed=8)
    for key in ("biases", "channel_mask", "dilations", "num_features_per_dilation"):
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["biases"], other["biases"])


def test_pretrain_build_forward(tmp_path):
    signals = random_walks(6, 12, 1000, seed=5)
    signals[2, 4, 10] = np.nan
    out = tmp_path / "minirocket" / get_config("minirocket").checkpoint_file
    summary = get_pretrainer("minirocket")(signals, out, {"max_fit_records": 4, "num_features": 840}, 0)
    assert summary["fit_records"] == 4 and summary["non_finite_records"] == 1 and summary["num_features"] == 840
    assert sorted(p.name for p in out.parent.iterdir()) == ["checkpoint.pth"]  # no temp file left behind
    saved = torch.load(out, weights_only=True)
    assert isinstance(saved, dict) and isinstance(saved["samples"], int)

    model = build_backbone("minirocket", out)
    batch = torch.from_numpy(random_walks(2, 12, 2000, seed=6))
    first, second = (model(batch[..., start : start + 1000])["embedding"] for start in (0, 1000))
    assert first.shape == (2, 840) and first.dtype == torch.float32
    assert torch.isfinite(first).all() and first.min() >= 0 and first.max() <= 1
    # a 20 s record is two windows whose features are averaged; bf16 autocast (as in extract) changes nothing
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model(batch)["embedding"], (first + second) / 2)


def test_no_normalisation_and_offset_invariance():
    """preprocess is the identity (MiniRocket works on millivolts); the zero-sum kernels make every
    valid-only feature ignore a baseline offset, while features counting padded outputs may change."""
    model = MiniRocket(fit(random_walks(4, 12, 1000, seed=9), 840, seed=0))
    signals = random_walks(3, 12, 1000, seed=10)
    assert model.preprocess(signals) is signals
    base = model.features(torch.from_numpy(signals))
    shifted = model.features(torch.from_numpy(signals + 5.0))
    valid_only = torch.from_numpy(outputs_counted(model, 1000) < 1000)
    assert torch.equal(base[:, valid_only], shifted[:, valid_only])
    assert not torch.equal(base[:, ~valid_only], shifted[:, ~valid_only])


@pytest.fixture(scope="module")
def small_fit() -> dict:
    return fit(random_walks(2, 12, 1000, seed=11), 840)


def corrupt(checkpoint: dict, how: str) -> object:
    checkpoint = dict(checkpoint)
    if how == "missing":
        del checkpoint["biases"]
    elif how == "renamed":
        checkpoint["bias"] = checkpoint.pop("biases")
    elif how == "reshaped":
        checkpoint["biases"] = checkpoint["biases"][:-1]
    elif how == "three leads":
        checkpoint["channel_mask"] = checkpoint["channel_mask"][..., :3].clone()
        checkpoint["channel_mask"][..., 0] = True
    elif how == "kernel without channels":
        checkpoint["channel_mask"] = checkpoint["channel_mask"].clone()
        checkpoint["channel_mask"][0, 5] = False
    elif how == "not a dict":
        return checkpoint["biases"]
    return checkpoint


@pytest.mark.parametrize(
    "how, named",
    [
        ("missing", "missing keys ['biases']"),
        ("renamed", "unexpected keys ['bias']"),
        ("reshaped", "biases: shape (839,) vs (840,)"),
        ("three leads", "fitted on 3 leads"),
        ("kernel without channels", "no channel"),
        ("not a dict", "found Tensor"),
    ],
)
def test_bad_checkpoint_refused(tmp_path, small_fit, how, named):
    path = tmp_path / "checkpoint.pth"
    torch.save(corrupt(small_fit, how), path)
    with pytest.raises(CheckpointError) as refused:
        build_backbone("minirocket", path)
    assert named in str(refused.value) and str(path) in str(refused.value)


def test_unreadable_checkpoint_refused(tmp_path):
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        build_backbone("minirocket", path)
