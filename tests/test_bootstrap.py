"""Weighted metrics against scikit-learn, and the subject-level bootstrap against a plain one-resample-at-a-time loop."""

import time

import numpy as np
import pytest
from sklearn import metrics as sk
from threadpoolctl import threadpool_limits

from pipeline.stage_two.metrics import (
    average_precision,
    best_expert,
    compute_metrics,
    evaluate_candidates,
    fixed_labels,
    per_label_auroc,
    primary_metric,
    primary_value,
    roc_auc,
    subject_counts,
    weighted_auroc_ap,
)
from pipeline.tasks import Task

TOL = 1e-9
BINARY = Task("flag", "binary", "flag")
MULTICLASS = Task("rhythm", "multiclass", "rhythm", ("SR", "AF", "OTHER", "RARE"))
MULTILABEL = Task("super", "multilabel", "super", ("A", "B", "C", "D", "E"))
REGRESSION = Task("rr", "regression", "rr")


def tied_scores(rng, n, levels=7):
    return rng.integers(0, levels, n) / levels  # few distinct values: many ties, within and across classes


@pytest.mark.parametrize("seed", range(6))
def test_rank_metrics_equal_sklearn_with_ties_and_weights(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    truth = rng.random(n) < rng.uniform(0.05, 0.6)
    truth[:2] = [True, False]
    for score in (tied_scores(rng, n), rng.random(n), truth * 0.3 + rng.random(n)):
        assert abs(roc_auc(score, truth) - sk.roc_auc_score(truth, score)) < TOL
        assert abs(average_precision(score, truth) - sk.average_precision_score(truth, score)) < TOL
        weight = rng.random(n) * 3
        weight[rng.random(n) < 0.2] = 0.0  # zero weights, as a bootstrap has for subjects not drawn
        weight[:2] = 1.0
        assert abs(roc_auc(score, truth, weight) - sk.roc_auc_score(truth, score, sample_weight=weight)) < TOL
        assert abs(average_precision(score, truth, weight) - sk.average_precision_score(truth, score, sample_weight=weight)) < TOL


def test_rank_metrics_edge_cases():
    truth = np.array([0, 1, 0, 1, 1])
    flat = np.full(5, 0.3)
    assert roc_auc(flat, truth) == pytest.approx(0.5, abs=TOL)
    assert abs(average_precision(flat, truth) - sk.average_precision_score(truth, flat)) < TOL
    assert roc_auc(truth * 1.0, truth) == 1.0 and roc_auc(-truth * 1.0, truth) == 0.0
    assert np.isnan(roc_auc(flat, np.ones(5))) and np.isnan(average_precision(flat, np.zeros(5)))


def test_rows_of_a_weight_matrix_are_independent_weighted_evaluations():
    rng = np.random.default_rng(1)
    truth, score = rng.random(80) < 0.3, tied_scores(rng, 80, 11)
    weights = rng.poisson(1.0, (25, 80)).astype(float)
    auroc, ap = weighted_auroc_ap(score, truth, weights)
    for r in range(25):
        assert abs(auroc[r] - sk.roc_auc_score(truth, score, sample_weight=weights[r])) < TOL
        assert abs(ap[r] - sk.average_precision_score(truth, score, sample_weight=weights[r])) < TOL


def classification_data(task, rng, n):
    """Truth and probabilities; multiclass leaves class RARE out of the truth, multilabel makes label E all-negative."""
    if task.type == "binary":
        truth = (rng.random(n) < 0.35).astype(float)
        return truth, np.round(np.clip(truth * 0.3 + rng.random(n) * 0.7, 0, 1), 1)[:, None]
    if task.type == "multiclass":
        truth = rng.integers(0, 3, n)
        logits = np.eye(4)[truth] * 1.2 + rng.random((n, 4))
        probability = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return truth, np.round(probability, 2)
    truth = (rng.random((n, 5)) < [0.4, 0.2, 0.1, 0.5, 0.0]).astype(float)
    return truth, np.round(np.clip(truth * 0.35 + rng.random((n, 5)) * 0.65, 0, 1), 1)


def sklearn_metrics(task, truth, probability, weight, labels):
    """The reference: scikit-learn on the same rows and weights, over the fixed label set `labels`."""
    if task.type == "binary":
        y, predicted = truth.astype(int), (probability[:, 0] >= 0.5).astype(int)
        onehot, score = y[:, None], probability
        prf_labels = [c for c in (0, 1) if (y == c).any()]
    elif task.type == "multiclass":
        y, predicted = truth, probability.argmax(1)
        onehot, score, prf_labels = np.eye(task.out_dim)[truth], probability, list(labels)
    else:
        y, predicted = truth.astype(int), (probability >= 0.5).astype(int)
        onehot, score, prf_labels = y, probability, list(labels)
    precision, recall, f1, _ = sk.precision_recall_fscore_support(y, predicted, labels=prf_labels, average="macro", zero_division=0, sample_weight=weight)
    out = {
        "accuracy": sk.accuracy_score(y, predicted, sample_weight=weight),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        # indicator matrices: scikit-learn's macro average over columns, here the fixed labels
        "auroc": sk.roc_auc_score(onehot[:, labels], score[:, labels], average="macro", sample_weight=weight),
        "auprc": sk.average_precision_score(onehot[:, labels], score[:, labels], average="macro", sample_weight=weight),
    }
    if task.type == "binary":
        p, r, f, _ = sk.precision_recall_fscore_support(y, predicted, average="binary", zero_division=0, sample_weight=weight)
        out.update(precision_pos=p, recall_pos=r, f1_pos=f)
    return out


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.type)
@pytest.mark.parametrize("weighted", [False, True])
def test_classification_point_estimates_equal_sklearn(task, weighted):
    rng = np.random.default_rng(2)
    truth, probability = classification_data(task, rng, 150)
    weight = rng.random(150) * 2 if weighted else None
    labels = fixed_labels(task, truth)
    assert list(labels) == {"binary": [0], "multiclass": [0, 1, 2], "multilabel": [0, 1, 2, 3]}[task.type]
    got = compute_metrics(task, truth, probability, sample_weight=weight)
    expected = sklearn_metrics(task, truth, probability, weight, labels)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert abs(got[name] - value) < TOL, name


def test_regression_point_estimates_equal_sklearn():
    rng = np.random.default_rng(3)
    truth = rng.normal(800, 120, 200)
    prediction = truth + rng.normal(0, 60, 200)
    for weight in (None, rng.random(200) * 3):
        got = compute_metrics(REGRESSION, truth, prediction[:, None], sample_weight=weight)
        assert abs(got["mae"] - sk.mean_absolute_error(truth, prediction, sample_weight=weight)) < TOL
        assert abs(got["mse"] - sk.mean_squared_error(truth, prediction, sample_weight=weight)) < 1e-9 * got["mse"]
        assert abs(got["r2"] - sk.r2_score(truth, prediction, sample_weight=weight)) < TOL


def test_per_label_auroc_equals_sklearn():
    rng = np.random.default_rng(4)
    truth, probability = classification_data(MULTILABEL, rng, 120)
    got = per_label_auroc(MULTILABEL, truth, probability)
    for k, name in enumerate("ABCD"):
        assert abs(got[name] - sk.roc_auc_score(truth[:, k], probability[:, k])) < TOL
    assert np.isnan(got["E"])  # no positive anywhere


def naive_bootstrap(task, truth, candidates, subjects, resamples, confidence, seed):
    """One resample at a time with scikit-learn and sample_weight, dropping resamples the way the docstring says."""
    counts, index = subject_counts(subjects, resamples, seed)
    labels = fixed_labels(task, truth)
    onehot = np.eye(task.out_dim)[truth] if task.type == "multiclass" else np.asarray(truth).reshape(len(truth), -1)
    values = {name: [] for name in candidates}
    used = 0
    for r in range(resamples):
        weight = counts[r][index]
        if task.type == "regression":
            ok = np.sum(weight * (truth - np.average(truth, weights=weight)) ** 2) > 0
        else:
            positives = weight @ onehot[:, labels]
            ok = bool(np.all((positives > 0) & (positives < weight.sum())))
        used += ok
        for name, prediction in candidates.items():
            if task.type == "regression":
                p = prediction.reshape(-1)
                got = {
                    "mae": sk.mean_absolute_error(truth, p, sample_weight=weight),
                    "mse": sk.mean_squared_error(truth, p, sample_weight=weight),
                    "r2": sk.r2_score(truth, p, sample_weight=weight) if ok else np.nan,
                }
            else:
                got = sklearn_metrics(task, truth, prediction, weight, labels)
                if not ok:
                    got["auroc"] = got["auprc"] = np.nan
            values[name].append(got)
    tail = (1 - confidence) / 2 * 100

    def interval(series):
        series = np.asarray(series, dtype=float)
        return np.percentile(series[np.isfinite(series)], [tail, 100 - tail])

    return values, used, interval


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL, REGRESSION], ids=lambda t: t.type)
def test_bootstrap_equals_a_one_resample_at_a_time_loop(task):
    rng = np.random.default_rng(5)
    n = 90
    if task.type == "regression":
        truth = rng.normal(0, 1, n)
        candidates = {"a": (truth + rng.normal(0, 0.5, n))[:, None], "b": (truth + rng.normal(0, 0.8, n))[:, None]}
    else:
        truth, a = classification_data(task, rng, n)
        candidates = {"a": a, "b": classification_data(task, np.random.default_rng(6), n)[1]}
    subjects = rng.integers(0, 40, n)  # about two records per subject
    got = evaluate_candidates(task, truth, candidates, subjects, resamples=20, confidence=0.9, seed=7, pairs={"a-b": ("a", "b")})
    values, used, interval = naive_bootstrap(task, truth, candidates, subjects, 20, 0.9, 7)
    assert got["bootstrap"]["resamples_used"] == used and got["bootstrap"]["subjects"] == len(np.unique(subjects))
    point = {name: compute_metrics(task, truth, p) for name, p in candidates.items()}
    for metric in point["a"]:
        for name in candidates:
            low, high = interval([v[metric] for v in values[name]])
            entry = got["models"][name][metric]
            assert abs(entry["value"] - point[name][metric]) < TOL
            assert abs(entry["low"] - low) < TOL and abs(entry["high"] - high) < TOL, (name, metric)
        low, high = interval([x[metric] - y[metric] for x, y in zip(values["a"], values["b"])])
        paired = got["paired"]["a-b"][metric]
        assert abs(paired["value"] - (point["a"][metric] - point["b"][metric])) < TOL
        assert abs(paired["low"] - low) < TOL and abs(paired["high"] - high) < TOL, metric


def test_resampling_draws_subjects_not_records():
    # subject 0 has 100 records, each predicted badly; 100 other subjects have one record each, predicted exactly
    subjects = np.r_[np.zeros(100, int), np.arange(1, 101)]
    truth = np.zeros(200)
    prediction = np.r_[np.full(100, 10.0), np.zeros(100)][:, None]
    counts, index = subject_counts(subjects, 300, seed=0)
    assert counts.shape == (300, 101) and np.all(counts.sum(1) == 101)
    weights = counts[:, index]
    assert np.all(weights[:, :100] == weights[:, :1])  # all records of one subject share its draw count
    by_subject = evaluate_candidates(REGRESSION, truth, {"m": prediction}, subjects, 300, 0.95, 0)["models"]["m"]["mae"]
    by_record = evaluate_candidates(REGRESSION, truth, {"m": prediction}, np.arange(200), 300, 0.95, 0)["models"]["m"]["mae"]
    assert by_subject["value"] == by_record["value"] == 5.0
    # record level: MAE = 10 x (share of bad records) ~ 5 +- 0.35; subject level: the one bad subject is drawn 0, 1, 2... times
    assert by_record["high"] - by_record["low"] < 2.0
    assert by_subject["low"] == 0.0 and by_subject["high"] - by_subject["low"] > 6.0


def test_resamples_missing_a_class_are_dropped_for_every_candidate_and_counted():
    rng = np.random.default_rng(8)
    n = 60
    truth = np.zeros((n, 5))
    truth[:, :4] = rng.random((n, 4)) < 0.4
    truth[0, 4] = 1  # label E: one positive record, of subject 0 only
    subjects = np.r_[0, rng.integers(1, 30, n - 1)]
    candidates = {"a": rng.random((n, 5)), "b": rng.random((n, 5))}
    got = evaluate_candidates(MULTILABEL, truth, candidates, subjects, 400, 0.95, 3, pairs={"a-b": ("a", "b")})
    counts, index = subject_counts(subjects, 400, 3)
    lacking = (counts[:, index[0]] == 0).sum()  # subject 0 not drawn: no positive for E
    assert 0.25 * 400 < lacking < 0.5 * 400  # about (1 - 1/30)^30 = 36% of the resamples
    boot = got["bootstrap"]
    assert boot["resamples_used"] == 400 - lacking and boot["labels_used"] == 5 and boot["labels"] == list("ABCDE")
    assert boot["unit"] == "subject" and boot["resamples"] == 400 and boot["subjects"] == len(np.unique(subjects))


def test_paired_difference_of_a_candidate_with_itself_is_exactly_zero():
    rng = np.random.default_rng(9)
    truth, probability = classification_data(MULTILABEL, rng, 100)
    got = evaluate_candidates(MULTILABEL, truth, {"moe": probability, "copy": probability.copy()}, rng.integers(0, 50, 100), 100, 0.95, 0,
                              pairs={"self": ("moe", "moe"), "copy": ("moe", "copy")})
    for pair in ("self", "copy"):
        for metric, entry in got["paired"][pair].items():
            assert entry == {"value": 0.0, "low": 0.0, "high": 0.0}, (pair, metric)
    assert got["models"]["moe"]["auroc"]["high"] > got["models"]["moe"]["auroc"]["low"]


def test_deterministic_for_a_seed_and_independent_of_the_candidates_passed():
    rng = np.random.default_rng(10)
    truth, a = classification_data(BINARY, rng, 120)
    b = classification_data(BINARY, np.random.default_rng(11), 120)[1]
    subjects = rng.integers(0, 70, 120)
    both = evaluate_candidates(BINARY, truth, {"a": a, "b": b}, subjects, 200, 0.95, 4)
    assert evaluate_candidates(BINARY, truth, {"a": a, "b": b}, subjects, 200, 0.95, 4) == both
    assert evaluate_candidates(BINARY, truth, {"a": a}, subjects, 200, 0.95, 4)["models"]["a"] == both["models"]["a"]
    assert evaluate_candidates(BINARY, truth, {"a": a}, subjects, 200, 0.95, 5)["models"]["a"] != both["models"]["a"]
    assert set(both["models"]["a"]) == {"accuracy", "precision", "recall", "f1", "auroc", "auprc", "precision_pos", "recall_pos", "f1_pos"}


def test_best_expert_and_primary_metric():
    assert primary_metric(REGRESSION) == ("mae", False) and primary_metric(MULTICLASS) == ("auroc", True)
    truth = np.array([0.0, 1.0, 2.0, 3.0])
    experts = {"far": truth[:, None] + 2, "near": truth[:, None] + 0.5, "under": truth[:, None] - 0.7}
    assert best_expert(REGRESSION, truth, experts) == "near"
    labels = np.array([0, 0, 1, 1], dtype=float)
    experts = {"weak": np.array([[0.4], [0.6], [0.5], [0.7]]), "strong": np.array([[0.1], [0.2], [0.8], [0.9]])}
    assert best_expert(BINARY, labels, experts) == "strong"
    assert best_expert(BINARY, np.ones(4), experts) == "weak"  # AUROC undefined for all: the first in order
    with pytest.raises(ValueError):
        best_expert(BINARY, labels, {})


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL, REGRESSION], ids=lambda t: t.type)
def test_primary_value_is_the_reported_primary_metric(task):
    """Early stopping's cheap metric equals what compute_metrics reports (ties, an absent class, an all-negative label)."""
    rng = np.random.default_rng(5)
    if task.type == "regression":
        truth = rng.normal(size=80)
        prediction = (truth + rng.normal(size=80))[:, None]
    else:
        truth, prediction = classification_data(task, rng, 80)
    metric, _ = primary_metric(task)
    assert primary_value(task, truth, prediction) == pytest.approx(compute_metrics(task, truth, prediction)[metric], abs=TOL)


def test_inputs_that_do_not_fit_are_refused():
    truth = np.array([0, 1, 0, 1], dtype=float)
    prediction = np.array([[0.2], [0.7], [0.4], [0.9]])
    with pytest.raises(ValueError, match="pair 'moe-best'.*unknown: \\['best'\\]"):
        evaluate_candidates(BINARY, truth, {"moe": prediction}, np.arange(4), 10, 0.95, 0, pairs={"moe-best": ("moe", "best")})
    with pytest.raises(ValueError, match="3 subject ids for 4 records"):
        evaluate_candidates(BINARY, truth, {"moe": prediction}, np.arange(3), 10, 0.95, 0)
    with pytest.raises(ValueError, match="candidate 'short'"):
        evaluate_candidates(BINARY, truth, {"short": prediction[:3]}, np.arange(4), 10, 0.95, 0)
    with pytest.raises(ValueError, match="candidate 'broken': 1 predictions are NaN"):
        evaluate_candidates(BINARY, truth, {"broken": np.r_[prediction[:3], [[np.nan]]]}, np.arange(4), 10, 0.95, 0)


def test_timing_of_a_ptbxl_sized_evaluation():
    """71 labels, five candidates, 1,126 records (~1,000 subjects), 1,000 resamples, on one core."""
    rng = np.random.default_rng(12)
    n, k = 1126, 71
    task = Task("statements", "multilabel", "statements", tuple(f"L{i}" for i in range(k)))
    truth = (rng.random((n, k)) < rng.uniform(0.01, 0.4, k)).astype(float)
    candidates = {name: np.clip(truth * 0.3 + rng.random((n, k)) * 0.7, 0, 1).astype(np.float32) for name in ("e1", "e2", "e3", "mean", "moe")}
    subjects = rng.integers(0, 1500, n)
    with threadpool_limits(1):
        start, cpu = time.perf_counter(), time.process_time()
        got = evaluate_candidates(task, truth, candidates, subjects, 1000, 0.95, 0, pairs={"moe-best": ("moe", "e1"), "moe-mean": ("moe", "mean")})
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"\nsubject bootstrap, 1000 resamples x 5 candidates x {k} labels x {n} records: {cpu:.2f} s CPU, {seconds:.2f} s wall")
    assert got["bootstrap"]["labels_used"] == k and got["bootstrap"]["resamples_used"] > 900
    assert cpu < 30  # CPU time of one thread: what one core costs, whatever else the machine runs
