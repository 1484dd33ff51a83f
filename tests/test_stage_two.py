"""Stage two's parts on synthetic embeddings: probes, probe-initialised heads, the gate and its variants."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_absolute_error, roc_auc_score

from pipeline.stage_two.gate import Gate, combine, expert_features, fit_gate, gate_weights, plain_mean
from pipeline.stage_two.heads import cached_forward, fit_head, frozen_parts, predict
from pipeline.stage_two.moe import gate_variants, moe_predict
from pipeline.stage_two.probe import ALPHAS, fit_probe
from pipeline.stage_two.training import MIN_IMPROVEMENT, fit, validation_split
from pipeline.seeding import seeded
from pipeline.tasks import Task

HEADS = {"hidden": 32, "epochs": 30, "lr": 0.003, "batch_size": 32, "weight_decay": 0.0, "val_fraction": 0.25, "patience": 5,
         "seed": 0, "probe": True, "lora": {"r": 4, "alpha": 16, "dropout": 0.0, "target_layers": [0, 2, 4]}}
GATE = {"hidden": 16, "channels": 4, "epochs": 30, "lr": 0.01, "batch_size": 32, "weight_decay": 0.0, "val_fraction": 0.25, "patience": 5, "seed": 0}
TASKS = {
    "regression": Task("r", "regression", "r"),
    "binary": Task("b", "binary", "b"),
    "multiclass": Task("m", "multiclass", "m", ("x", "y", "z")),
    "multilabel": Task("l", "multilabel", "l", ("p", "q", "s", "t")),
}


def synthetic(kind: str, n: int = 300, d: int = 20, seed: int = 0):
    """Embeddings whose first features carry the label linearly, plus a nonlinear part."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.5, 3, d).astype(np.float32) + 5
    z = (x - 5) / x.std(0)
    if kind == "regression":
        y = (2 * z[:, 0] + np.abs(z[:, 1]) + rng.normal(0, 0.3, n)).astype(np.float32)
    elif kind == "binary":
        y = (z[:, 0] + 0.5 * z[:, 1] ** 2 + rng.normal(0, 0.5, n) > 0.5).astype(np.float32)
    elif kind == "multiclass":
        y = np.digitize(z[:, 0] + rng.normal(0, 0.3, n), [-0.5, 0.5])
    else:
        y = (z[:, :4] + rng.normal(0, 0.5, (n, 4)) > 0.7).astype(np.float32)
        y[:, 3] = 0  # a label with no positive in the training rows
    return x, y, np.arange(n) // 2  # two records per subject


def test_regression_probe_is_ridge_with_the_loo_penalty():
    x, y, _ = synthetic("regression")
    weight, bias = fit_probe(TASKS["regression"], x, y)
    reference = RidgeCV(alphas=ALPHAS).fit(x, y)
    np.testing.assert_allclose(weight[0], reference.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(bias[0], reference.intercept_, rtol=1e-6)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_classification_probe_gives_calibrated_logits(kind):
    task = TASKS[kind]
    x, y, _ = synthetic(kind, n=600)
    weight, bias = fit_probe(task, x[:400], y[:400])
    logits = x[400:] @ weight.T + bias
    truth = np.eye(3)[y[400:]] if kind == "multiclass" else y[400:].reshape(200, -1)
    probability = 1 / (1 + np.exp(-logits)) if kind != "multiclass" else np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for k in range(truth.shape[1]):
        if 0 < truth[:, k].sum() < len(truth):
            assert roc_auc_score(truth[:, k], probability[:, k]) > 0.75
    if kind == "multilabel":  # never positive in training: a constant, low logit
        assert not weight[3].any() and bias[3] < -4
    # calibrated: the mean predicted rate is close to the observed rate
    np.testing.assert_allclose(probability.mean(0)[: truth.shape[1] - (kind == "multilabel")], truth.mean(0)[: truth.shape[1] - (kind == "multilabel")], atol=0.08)


def test_a_probe_never_ranks_against_its_training_labels():
    """Labels the embedding says nothing about: the probe is the prior or ranks with the labels, never against
    them (a negative Platt slope on leave-one-out scores would flip it)."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2000, 12))
    y = (rng.random((2000, 8)) < 0.1).astype(float)  # independent of z
    weight, bias = fit_probe(TASKS["multilabel"], z, y)
    for label in range(y.shape[1]):
        assert not weight[label].any() or roc_auc_score(y[:, label], z @ weight[label]) > 0.5


@pytest.mark.parametrize("kind", list(TASKS))
def test_head_starts_at_its_probe_and_ends_no_worse_on_held_out_subjects(kind):
    """...in the primary metric (AUROC or MAE), recomputed here with scikit-learn on the held-out subjects."""
    task = TASKS[kind]
    x, y, subjects = synthetic(kind)
    untrained = fit_head(task, x, y, subjects, {**HEADS, "epochs": 0}, seed=1)
    np.testing.assert_allclose(predict(task, untrained.model, x), predict(task, untrained.probe, x), atol=1e-6)
    fitted = fit_head(task, x, y, subjects, HEADS, seed=1)
    history = fitted.history
    assert len(history["validation"]) == len(history["score"]) == len(history["train"]) + 1  # the start, then every epoch
    np.testing.assert_allclose(predict(task, fitted.probe, x), predict(task, untrained.probe, x), atol=1e-6)
    _, held_out = validation_split(subjects, HEADS["val_fraction"], 1)
    head, probe = (predict(task, model, x[held_out]) for model in (fitted.model, fitted.probe))
    if task.type == "regression":
        assert mean_absolute_error(y[held_out], head) <= mean_absolute_error(y[held_out], probe) + 1e-6
        return
    truth = np.eye(3)[y[held_out]] if kind == "multiclass" else y[held_out].reshape(len(held_out), -1)
    varied = [k for k in range(truth.shape[1]) if 0 < truth[:, k].sum() < len(truth)]
    auroc = lambda p: roc_auc_score(truth[:, varied], p.reshape(len(held_out), -1)[:, varied], average="macro")  # noqa: E731
    assert auroc(head) >= auroc(probe) - 1e-6
    assert auroc(head) >= -min(history["score"]) - 1e-6  # the kept epoch's score, or better where labels went back to the probe


def test_labels_whose_correction_does_not_help_on_held_out_subjects_keep_their_probe_exactly():
    task = TASKS["multilabel"]
    x, y, subjects = synthetic("multilabel")
    y[:, 1] = (x[:, 2] - 5) * (x[:, 3] - 5) > 0  # a nonlinear label (XOR of two features) only the correction can rank
    _, held_out = validation_split(subjects, HEADS["val_fraction"], 1)
    y[np.setdiff1d(np.arange(len(y)), held_out)[:3], 3] = 1  # label 3: three training positives, none held out
    fitted = fit_head(task, x, y, subjects, {**HEADS, "epochs": 40, "patience": 10}, seed=1)
    reverted = fitted.history["probe_labels"]
    head, probe = (predict(task, model, x) for model in (fitted.model, fitted.probe))
    assert 3 in reverted and 1 not in reverted
    np.testing.assert_allclose(head[:, reverted], probe[:, reverted], atol=1e-6)
    for label in sorted(set(range(4)) - set(reverted)):
        assert roc_auc_score(y[held_out, label], head[held_out, label]) > roc_auc_score(y[held_out, label], probe[held_out, label])


@pytest.mark.parametrize("layers", [[0, 2, 4], [2, 4]])
def test_training_forward_from_the_frozen_parts_equals_the_model(layers):
    """Training's cached forward is the peft model's own forward, with trained (non-zero) adapters and with dropout."""
    task = TASKS["multilabel"]
    x, y, subjects = synthetic("multilabel")
    settings = {**HEADS, "epochs": 3, "val_fraction": 0.0, "lora": {**HEADS["lora"], "dropout": 0.2, "target_layers": layers}}
    model = fit_head(task, x, y, subjects, settings, seed=0).model
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    inputs = torch.from_numpy(x)
    with torch.no_grad():
        for mode in (model.eval, model.train):
            mode()
            with seeded(3):
                expected = model(inputs)
            with seeded(3):
                actual = cached_forward(model, *frozen_parts(model, inputs))
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_head_can_learn_what_the_probe_cannot():
    """The FFN correction learns a nonlinearity the linear probe misses (held-out loss clearly lower)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((800, 4)).astype(np.float32)
    y = (np.abs(x[:, 0]) * 2 + 0.5 * x[:, 1]).astype(np.float32)
    task = TASKS["regression"]
    fitted = fit_head(task, x, y, np.arange(800), {**HEADS, "epochs": 60, "patience": 10, "hidden": 64}, seed=0)
    assert min(fitted.history["validation"]) < 0.5 * fitted.history["validation"][0]


def test_per_label_bias_is_trained_and_saved(tmp_path):
    from pipeline.stage_two.heads import load_head, save_head

    x, y, subjects = synthetic("multilabel")
    fitted = fit_head(TASKS["multilabel"], x, y, subjects, HEADS, seed=0)
    trainable = {name for name, p in fitted.model.named_parameters() if p.requires_grad}
    assert any(name.endswith(".bias") and "lora" not in name for name in trainable) and any("lora_B" in name for name in trainable)
    assert not any("probe" in name for name in trainable)  # the probe is the frozen start
    save_head(fitted.model, tmp_path / "head")
    np.testing.assert_allclose(predict(TASKS["multilabel"], load_head(tmp_path / "head"), x), predict(TASKS["multilabel"], fitted.model, x), atol=1e-6)


def test_head_without_probe_starts_at_the_prior():
    x, y, subjects = synthetic("binary")
    fitted = fit_head(TASKS["binary"], x, y, subjects, {**HEADS, "probe": False, "epochs": 0}, seed=0)
    start = predict(TASKS["binary"], fitted.model, x)
    assert np.ptp(start) < 1e-6 and abs(start.mean() - y.mean()) < 0.05


def test_seeded_restores_the_deterministic_switch_and_rng():
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    with seeded(7):
        assert torch.are_deterministic_algorithms_enabled() == torch.cuda.is_available()  # the switch is for CUDA
        torch.rand(5)
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.rand(1), expected)


def gate_data(n=240, seed=0):
    """Two experts, each right on one kind of record; the kind is visible in the lead (a spike train's rate)."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    leads = rng.normal(0, 0.05, (n, 1, 500)).astype(np.float32)
    for i in range(n):
        period = 25 if kind[i] else 60
        leads[i, 0, rng.integers(0, period) :: period] += 1.0
    target = rng.normal(0, 1, n).astype(np.float32)
    noise = rng.normal(0, 1, (n, 2)).astype(np.float32)
    good, bad = target + 0.1 * noise[:, 0], target + 2.0 * noise[:, 1]
    experts = np.where(kind[:, None] == 1, np.stack([good, bad], 1), np.stack([bad, good], 1))[:, :, None].astype(np.float32)
    return leads, experts, target, kind


def test_gate_starts_as_the_plain_mean_and_learns_to_specialise_from_the_leads():
    leads, experts, target, kind = gate_data()
    task = TASKS["regression"]
    features = expert_features(task, experts, 1.0)
    untrained = Gate(1, features.shape[1], 2, ["leads", "outputs"])
    np.testing.assert_allclose(gate_weights(untrained, leads, features), 0.5)
    gate, history = fit_gate(task, leads, features, experts, target, np.arange(len(target)), {**GATE, "epochs": 60, "patience": 15}, 1.0, ["leads"])
    weights = gate_weights(gate, leads, features)
    assert weights[kind == 1, 0].mean() > 0.7 and weights[kind == 0, 1].mean() > 0.7, history
    # shift-invariant: the same records moved in time get nearly the same weights
    shifted = np.roll(leads, 37, axis=-1)
    assert np.abs(gate_weights(gate, shifted, features) - weights).max() < 0.15


def test_gate_variants_and_constant_gate():
    assert gate_variants({"inputs": ["leads"], "ablations": ["constant", "outputs", "leads+outputs"]}) == {
        "moe": ["leads"], "moe:constant": [], "moe:outputs": ["outputs"], "moe:leads+outputs": ["leads", "outputs"]}
    leads, experts, target, _ = gate_data()
    experts[:, 1] = experts[:, 0] + 3.0  # expert 1 is always worse: a constant gate learns to ignore it
    task = TASKS["regression"]
    features = expert_features(task, experts, 1.0)
    gate, _ = fit_gate(task, leads, features, experts, target, np.arange(len(target)), {**GATE, "epochs": 100, "lr": 0.05, "patience": 20}, 1.0, [])
    weights = gate_weights(gate, leads, features)
    assert np.ptp(weights, axis=0).max() < 1e-6 and weights[0, 0] > 0.8


def test_gate_early_stops_on_the_held_out_auroc_and_scores_its_start():
    """A classification gate follows the held-out macro AUROC of its mixture (history["score"], the plain mean first)
    and keeps no weights whose held-out AUROC is below the plain mean's."""
    leads, _, _, kind = gate_data(n=400)
    rng = np.random.default_rng(2)
    label = (rng.random(400) < 0.3).astype(np.float32)
    sharp, vague = np.clip(label * 0.6 + rng.random(400) * 0.4, 0.01, 0.99), rng.random(400) * 0.98 + 0.01
    experts = np.where(kind[:, None] == 1, np.stack([sharp, vague], 1), np.stack([vague, sharp], 1))[:, :, None].astype(np.float32)
    task = TASKS["binary"]
    features = expert_features(task, experts, 1.0)
    settings = {**GATE, "epochs": 30, "patience": 10}
    gate, history = fit_gate(task, leads, features, experts, label, np.arange(400), settings, 1.0, ["leads"])
    _, held_out = validation_split(np.arange(400), settings["val_fraction"], settings["seed"])
    mixture = combine(task, torch.from_numpy(gate_weights(gate, leads, features)), torch.from_numpy(experts)).numpy()[held_out, 0]
    plain = plain_mean(task, experts)[held_out, 0]
    assert len(history["score"]) == len(history["train"]) + 1
    assert -history["score"][0] == pytest.approx(roc_auc_score(label[held_out], plain), abs=1e-6)
    assert roc_auc_score(label[held_out], mixture) == pytest.approx(-min(history["score"]), abs=1e-6)
    assert -min(history["score"]) > -history["score"][0] + 0.05  # the lead tells which expert is the sharp one


def test_early_stopping_counts_only_improvements_above_the_relative_threshold():
    """A held-out score that keeps creeping down by less than MIN_IMPROVEMENT of itself is a plateau: training
    stops `patience` epochs after the last real improvement and keeps that epoch's weights."""
    scores = iter([100.0, 60.0, 50.0] + [50.0 * (1 - 0.2 * MIN_IMPROVEMENT) ** k for k in range(1, 100)])
    model = torch.nn.Linear(1, 1)
    x, y = torch.ones(8, 1), torch.zeros(8, 1)
    kept = {}

    def score(m, rows):
        value = next(scores)
        kept.setdefault("weights", []).append(m.weight.detach().clone())
        return value

    history = fit(model, (x, y), lambda m, xb, yb: ((m(xb) - yb) ** 2).mean(), {"epochs": 50, "lr": 0.01, "batch_size": 4, "patience": 3},
                  0, (np.arange(6), np.arange(6, 8)), score=score)
    assert len(history["train"]) == 2 + 3  # epoch 2 was the last real improvement, then 3 epochs of creeping
    torch.testing.assert_close(model.weight, kept["weights"][2])


def test_experts_are_mixed_in_logits_so_a_small_weight_on_a_weak_expert_keeps_the_ranking():
    rng = np.random.default_rng(0)
    strong = 1 / (1 + np.exp(-rng.normal(-7, 1.5, (500, 1))))  # a rare label: probabilities ~1e-3
    weak = 1 / (1 + np.exp(-rng.normal(-4.5, 0.05, (500, 1))))  # ~1e-2, nearly constant
    experts = torch.from_numpy(np.stack([strong, weak], 1))
    weights = torch.tensor([[0.99, 0.01]], dtype=torch.float64).expand(500, -1)
    mixed = combine(TASKS["multilabel"], weights, experts).numpy()
    assert np.corrcoef(np.argsort(np.argsort(mixed[:, 0])), np.argsort(np.argsort(strong[:, 0])))[0, 1] > 0.999
    logits = lambda p: np.log(p / (1 - p))  # noqa: E731
    np.testing.assert_allclose(logits(mixed), 0.99 * logits(strong) + 0.01 * logits(weak), rtol=1e-9)
    classes = torch.softmax(torch.randn(500, 2, 3, dtype=torch.float64), dim=-1)
    multiclass = combine(TASKS["multiclass"], weights, classes)
    torch.testing.assert_close(multiclass, torch.softmax(0.99 * classes[:, 0].log() + 0.01 * classes[:, 1].log(), dim=-1))
    assert np.allclose(plain_mean(TASKS["regression"], experts.numpy()), experts.numpy().mean(1))
    # a confident expert's tiny probabilities (and exact 0 or 1) keep their order and stay finite
    confident = torch.tensor([0.0, 1e-30, 1e-12, 1e-9, 1e-7, 0.5, 1.0], dtype=torch.float32)[:, None, None].expand(-1, 2, 1)
    alone = combine(TASKS["binary"], torch.tensor([[1.0, 0.0]]).expand(7, -1), confident)[:, 0]
    assert torch.isfinite(alone).all() and (alone.diff() > 0).all()


def test_moe_gates_each_fold_model_and_averages_the_mixtures():
    leads, experts, _, _ = gate_data(n=50)
    task = TASKS["regression"]
    config = {"target_scale": 1.0}
    gate = Gate(1, 2, 2, ["outputs"])
    with torch.no_grad():
        gate.net[2].weight.normal_()
    folds = np.stack([experts, experts + 1.0, experts * 2.0])
    weights, moe = moe_predict(task, gate, config, leads, folds)
    per_fold = [(gate_weights(gate, leads, expert_features(task, f, 1.0))[:, :, None] * f).sum(1) for f in folds]
    np.testing.assert_allclose(moe, np.mean(per_fold, axis=0), rtol=1e-5)
    assert weights.shape == (50, 2)
