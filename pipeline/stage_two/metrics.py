"""Metrics per task type, and a subject-level bootstrap that compares candidates on the same resamples.

Predictions are in the ensemble's space (values, or probabilities). Thresholds: 0.5 for binary and multilabel,
argmax for multiclass; multilabel accuracy is the subset accuracy (every label of a record right).

Every metric is computed with sample weights and vectorised over resamples: resample r gives each record a
weight, the number of times its subject was drawn. A point estimate is the same computation with one resample of
unit weights, so point estimates and resamples cannot disagree on a definition. Point estimates equal
scikit-learn's (`roc_auc_score`, `average_precision_score`, `precision_recall_fscore_support(labels=...,
average="macro", zero_division=0)`, `accuracy_score`, `mean_absolute_error`, `mean_squared_error`, `r2_score`,
each with `sample_weight`) to rounding; tests/test_bootstrap.py checks this to 1e-9.

- AUROC is rank based: P(score_pos > score_neg) + 0.5 P(tie), each pair weighted by the product of its weights.
- AUPRC is average precision exactly as scikit-learn defines it: the sum over distinct thresholds, from the
  highest, of (R_n - R_{n-1}) P_n (step-wise, no interpolation).
- Fixed label set: macro AUROC/AUPRC/precision/recall/F1 average over the labels (classes one-vs-rest, for
  multiclass) with at least one positive and at least one negative in the WHOLE evaluated set (scikit-learn's
  `labels=` semantics for P/R/F1). Binary tasks average P/R/F1 over the classes 0 and 1 (those present) and also
  report the positive class alone (`precision_pos`, `recall_pos`, `f1_pos`).
- R2 is NaN where the (weighted) targets are all equal (scikit-learn would return 1.0 or 0.0 there).

Bootstrap (`evaluate_candidates`): each resample draws n_subjects subjects with replacement, and a record counts
as many times as its subject was drawn, so the records of one subject stay together. A resample in which any
label of the fixed set has no positive or no negative is dropped for AUROC and AUPRC, for every candidate alike;
the other metrics are defined on every resample (R2: wherever the drawn targets are not all equal). Intervals are
percentile intervals. Paired differences metric(a) - metric(b) are taken per resample, on the same resamples.

How it is fast: every metric is linear in the weights up to a final division, so it is computed at subject
level (a [R, n_subjects] count matrix times per-subject sums). For AUROC/AUPRC, each label's records are sorted
once; one sparse product per label gives, per resample, the negative weight between consecutive positives and
each positive's weight, and short cumulative sums over the positives give both curves. Measured: 1,000 resamples
of every metric (macro AUROC and AUPRC over 71 labels included) for five candidates on 1,126 records take 2.4 s
wall on one thread of a quiet-ish 2-core machine, 3.6-4.1 s CPU with that machine oversubscribed (load 4);
test_timing_of_a_ptbxl_sized_evaluation prints its own measurement. The cost grows as resamples x records x
labels x candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from pipeline.tasks import Task

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "auroc", "auprc")
BINARY_EXTRA_METRICS = ("precision_pos", "recall_pos", "f1_pos")
REGRESSION_METRICS = ("mae", "mse", "r2")
RANKED_METRICS = ("auroc", "auprc")  # the metrics for which a resample missing a class is dropped
ELEMENTS_PER_CHUNK = 4_000_000  # resamples x subjects handled at once; bounds memory on large test sets


def primary_metric(task: Task) -> tuple[str, bool]:
    """The metric that ranks candidates, and whether higher is better: ("auroc", True) or ("mae", False)."""
    return ("mae", False) if task.type == "regression" else ("auroc", True)


def metric_names(task: Task) -> tuple[str, ...]:
    """The metrics reported for the task's type, in report order."""
    if task.type == "regression":
        return REGRESSION_METRICS
    return CLASSIFICATION_METRICS + (BINARY_EXTRA_METRICS if task.type == "binary" else ())


# --- weighted AUROC and average precision, vectorised over resamples -------------------------------------


@dataclass
class _RankPlan:
    """One binary label's records in score order, as a sparse map from unit weights to the sums the curves need.

    Rows of `matrix` [1 + segments + positives, units]: an empty row, the negatives' weight in each segment
    between consecutive distinct positive scores, then each positive's own weight (positives by ascending score).
    After a cumulative sum over the first 1 + segments rows, row k holds the negative weight scored below bound k."""

    matrix: sparse.csr_matrix
    segments: int
    below: np.ndarray  # per positive: the row that holds the negative weight scored strictly below it
    upto: np.ndarray | None  # per positive: the row for negatives scored at or below it (None: no negative ties)
    positives_below: np.ndarray | None  # per positive: how many positives score strictly below it (None: no ties)


def _rank_plan(score: np.ndarray, positive: np.ndarray, units: sparse.csr_matrix | None) -> _RankPlan | None:
    """The plan for one label (None when it has no positive or no negative record)."""
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    if not len(pos) or not len(neg):
        return None
    pos = pos[np.argsort(score[pos], kind="stable")]
    neg = neg[np.argsort(score[neg], kind="stable")]
    t, u = score[pos], score[neg]
    left, right = np.searchsorted(u, t, "left"), np.searchsorted(u, t, "right")  # negatives below / at or below
    bounds = np.unique(np.concatenate([[0, len(neg)], left, right]))  # segment j: sorted negatives bounds[j]..bounds[j+1]
    segments = len(bounds) - 1
    segment_of = np.searchsorted(bounds, np.arange(len(neg)), "right")  # 1 + segment index: row 0 stays empty
    rows = np.concatenate([segment_of, 1 + segments + np.arange(len(pos))])
    matrix = sparse.csr_matrix((np.ones(len(rows)), (rows, np.concatenate([neg, pos]))), shape=(1 + segments + len(pos), len(score)))
    if units is not None:
        matrix = (matrix @ units).tocsr()
    positives_below = np.searchsorted(t, t, "left")
    return _RankPlan(
        matrix=matrix,
        segments=segments,
        below=np.searchsorted(bounds, left),
        upto=np.searchsorted(bounds, right) if np.any(left != right) else None,
        positives_below=None if np.array_equal(positives_below, np.arange(len(pos))) else positives_below,
    )


def _rank_curves(plan: _RankPlan | None, unit_weights_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUROC [R], AP [R]) from unit weights [units, R]; NaN where a resample lacks a positive or a negative."""
    if plan is None:
        nan = np.full(unit_weights_t.shape[1], np.nan)
        return nan, nan.copy()
    sums = plan.matrix @ unit_weights_t
    negatives = sums[: plan.segments + 1]
    np.cumsum(negatives, axis=0, out=negatives)  # row k: negative weight below bound k
    weight = sums[plan.segments + 1 :]  # each positive's weight
    at_or_above = np.cumsum(weight[::-1], axis=0)[::-1]  # positive weight from each positive upwards
    total_neg, total_pos = negatives[-1], at_or_above[0]
    below = negatives[plan.below]  # negative weight scored strictly below each positive
    with np.errstate(divide="ignore", invalid="ignore"):
        beaten = below if plan.upto is None else 0.5 * (below + negatives[plan.upto])  # + half the tied negatives
        auroc = np.einsum("ij,ij->j", weight, beaten) / (total_pos * total_neg)
        # at the threshold of each positive: tp = positives scored >= it, fp = negatives scored >= it
        tp = at_or_above if plan.positives_below is None else at_or_above[plan.positives_below]
        predicted = np.subtract(total_neg, below, out=below)
        predicted += tp
        np.maximum(predicted, np.finfo(float).tiny, out=predicted)  # tp + fp = 0 only where tp = 0: precision 0
        ap = np.einsum("ij,ij->j", weight, np.divide(tp, predicted, out=predicted)) / total_pos
    return auroc, ap


def _weights_matrix(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.ones((1, n))
    weights = np.asarray(weights, dtype=float)
    return weights[None] if weights.ndim == 1 else weights


def weighted_auroc_ap(score, positive, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """(AUROC [R], average precision [R]) of one binary label for each row of `weights` ([R, N], [N], None: ones).

    NaN where a row has no positive or no negative weight."""
    score = np.asarray(score, dtype=float).reshape(-1)
    plan = _rank_plan(score, np.asarray(positive).reshape(-1).astype(bool), None)
    return _rank_curves(plan, np.ascontiguousarray(_weights_matrix(weights, len(score)).T))


def roc_auc(score, positive, sample_weight=None) -> float:
    """Weighted rank AUROC of one binary label (scikit-learn's roc_auc_score; NaN instead of its error)."""
    return float(weighted_auroc_ap(score, positive, sample_weight)[0][0])


def average_precision(score, positive, sample_weight=None) -> float:
    """Weighted average precision of one binary label (scikit-learn's average_precision_score)."""
    return float(weighted_auroc_ap(score, positive, sample_weight)[1][0])


# --- task views --------------------------------------------------------------------------------------------


def _columns(task: Task, target: np.ndarray, prediction: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(truth [N, K] bool, score [N, K], predicted [N, K] bool): one column per label that AUROC/AUPRC rank."""
    n = len(target)
    target = np.asarray(target)
    if task.type == "multiclass":
        classes = np.arange(task.out_dim)
        truth = target.reshape(n, 1) == classes
        if prediction is None:
            return truth, None, None
        score = np.asarray(prediction, dtype=float).reshape(n, -1)
        return truth, score, score.argmax(1)[:, None] == classes
    truth = target.reshape(n, -1) >= 0.5
    if prediction is None:
        return truth, None, None
    score = np.asarray(prediction, dtype=float).reshape(n, -1)
    return truth, score, score >= 0.5


def fixed_labels(task: Task, target: np.ndarray) -> np.ndarray:
    """Column indices of the labels with at least one positive and one negative in `target` (regression: none)."""
    if task.type == "regression":
        return np.zeros(0, dtype=int)
    truth = _columns(task, target, None)[0]
    count = truth.sum(0)
    return np.flatnonzero((count > 0) & (count < len(truth)))


def label_names(task: Task, labels: np.ndarray) -> list[str]:
    names = task.classes if task.type in ("multiclass", "multilabel") else (task.name,)
    return [names[k] for k in labels]


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Macro precision, recall, F1 over the columns; a 0/0 counts as 0 (zero_division=0)."""
    if tp.shape[1] == 0:
        nan = np.full(len(tp), np.nan)
        return nan, nan.copy(), nan.copy()
    divide = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b > 0)  # noqa: E731
    return divide(tp, tp + fp).mean(1), divide(tp, tp + fn).mean(1), divide(2 * tp, 2 * tp + fp + fn).mean(1)


class _Evaluator:
    """What every candidate shares: the truth, the fixed labels, and the map from records to resampling units.

    Weights are given per unit ([R, units]); a record's weight is its unit's. Units are subjects in the
    bootstrap and records for plain sample weights."""

    def __init__(self, task: Task, target: np.ndarray, units: np.ndarray | None = None, labels: np.ndarray | None = None):
        self.task, self.target, self.n = task, np.asarray(target), len(target)
        index = np.arange(self.n) if units is None else np.asarray(units).reshape(-1)
        self.n_units = int(index.max()) + 1 if self.n else 0
        self.units = None if units is None else sparse.csr_matrix((np.ones(self.n), (np.arange(self.n), index)), shape=(self.n, self.n_units))
        if task.type == "regression":
            y = self.target.astype(float).reshape(-1)
            self.y = y
            centred = y - y.mean() if self.n else y
            self.y_sums = self.sum_units(np.stack([np.ones(self.n), centred, centred**2], axis=1))
            self.labels = np.zeros(0, dtype=int)
            return
        self.labels = fixed_labels(task, self.target) if labels is None else np.asarray(labels, dtype=int)
        self.truth = _columns(task, self.target, None)[0]
        if task.type == "binary":  # precision/recall/F1 average over the classes 0 and 1 that occur
            self.binary_classes = [c for c in (0, 1) if (self.truth[:, 0] == bool(c)).any()]
            self.prf_truth = np.stack([~self.truth[:, 0], self.truth[:, 0]], axis=1)[:, self.binary_classes]
        else:
            self.prf_truth = self.truth[:, self.labels]
        self.label_sums = self.sum_units(np.concatenate([np.ones((self.n, 1)), self.truth[:, self.labels]], axis=1).astype(float))

    def sum_units(self, x: np.ndarray) -> np.ndarray:
        """Per-record values [N, ...] -> their sums per unit [units, ...]."""
        return x if self.units is None else np.asarray(self.units.T @ x)

    def valid(self, weights: np.ndarray) -> np.ndarray:
        """Resamples (rows of unit weights) in which every fixed label has a positive and a negative."""
        if self.task.type == "regression":
            return self.total_squares(weights) > 0
        if not len(self.labels):
            return np.zeros(len(weights), dtype=bool)
        sums = weights @ self.label_sums
        positives = sums[:, 1:]
        return np.all((positives > 0) & (sums[:, :1] - positives > 0), axis=1)

    def total_squares(self, weights: np.ndarray) -> np.ndarray:
        """Weighted total sum of squares of the regression target per resample (R2's denominator)."""
        total, first, second = (weights @ self.y_sums).T
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.maximum(second - np.where(total > 0, first**2 / total, 0), 0)

    def prepare(self, prediction: np.ndarray) -> dict:
        """Per-unit sums of one candidate's per-record quantities, and its rank plans."""
        prediction = np.asarray(prediction)
        if len(prediction) != self.n:
            raise ValueError(f"{len(prediction)} predictions for {self.n} records")
        if not np.all(np.isfinite(prediction)):
            raise ValueError(f"{int(np.sum(~np.isfinite(prediction)))} predictions are NaN or infinite")
        if self.task.type == "regression":
            error = prediction.astype(float).reshape(self.n, -1)[:, 0] - self.y
            return {"sums": self.sum_units(np.stack([np.abs(error), error**2], axis=1))}
        truth, score, predicted = _columns(self.task, self.target, prediction)
        if self.task.type == "binary":
            prf_predicted = np.stack([~predicted[:, 0], predicted[:, 0]], axis=1)[:, self.binary_classes]
        else:
            prf_predicted = predicted[:, self.labels]
        t, p = self.prf_truth, prf_predicted
        columns = [np.ones((self.n, 1), bool), np.all(truth == predicted, axis=1)[:, None], t & p, ~t & p, t & ~p]
        if self.task.type == "binary":
            columns += [truth & predicted, ~truth & predicted, truth & ~predicted]
        plans = [_rank_plan(score[:, k], truth[:, k], self.units) for k in self.labels]
        return {"sums": self.sum_units(np.concatenate(columns, axis=1).astype(float)), "plans": plans}

    def samples(self, prepared: dict, weights: np.ndarray, ranked: bool = True) -> dict[str, np.ndarray]:
        """{metric: [R]} for one candidate and each row of unit weights; AUROC/AUPRC are NaN unless `ranked`."""
        summed = weights @ prepared["sums"]
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.task.type == "regression":
                total = weights @ self.y_sums[:, 0]
                sst = self.total_squares(weights)
                r2 = np.where(sst > 0, 1 - summed[:, 1] / np.where(sst > 0, sst, 1), np.nan)
                return {"mae": summed[:, 0] / total, "mse": summed[:, 1] / total, "r2": r2}
            out = {"accuracy": summed[:, 1] / summed[:, 0]}
        m = self.prf_truth.shape[1]
        tp, fp, fn = (summed[:, 2 + i * m : 2 + (i + 1) * m] for i in range(3))
        out.update(zip(("precision", "recall", "f1"), _prf(tp, fp, fn)))
        if self.task.type == "binary":
            out.update(zip(BINARY_EXTRA_METRICS, _prf(*(summed[:, 2 + 3 * m + i : 3 + 3 * m + i] for i in range(3)))))
        if ranked:
            out["auroc"], out["auprc"] = self.ranked(prepared, np.ascontiguousarray(weights.T))
        else:
            out["auroc"], out["auprc"] = np.full(len(weights), np.nan), np.full(len(weights), np.nan)
        return {name: out[name] for name in metric_names(self.task)}

    def ranked(self, prepared: dict, weights_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Macro AUROC and AUPRC over the fixed labels, from unit weights [units, R] (the costly part)."""
        plans = prepared["plans"]
        if not plans:
            return np.full(weights_t.shape[1], np.nan), np.full(weights_t.shape[1], np.nan)
        auroc, ap = np.zeros(weights_t.shape[1]), np.zeros(weights_t.shape[1])
        for plan in plans:
            a, p = _rank_curves(plan, weights_t)
            auroc += a
            ap += p
        return auroc / len(plans), ap / len(plans)


def weighted_metrics(task: Task, target: np.ndarray, prediction: np.ndarray, weights=None, labels=None) -> dict[str, np.ndarray]:
    """{metric: [R]}: every metric of the task's type for each row of record weights ([R, N], [N], None: ones).

    `labels` fixes the label set of the macro metrics (default: the labels with both values in `target`)."""
    evaluator = _Evaluator(task, target, labels=labels)
    return evaluator.samples(evaluator.prepare(prediction), _weights_matrix(weights, len(target)))


def compute_metrics(task: Task, target: np.ndarray, prediction: np.ndarray, sample_weight=None) -> dict[str, float]:
    """All metrics of the task's type for one set of predictions: the point estimates `evaluate_candidates` reports."""
    return {name: float(value[0]) for name, value in weighted_metrics(task, target, prediction, sample_weight).items()}


def primary_value(task: Task, target: np.ndarray, prediction: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The primary metric alone, the cheap way (what early stopping asks for every epoch): MAE, or the macro
    AUROC over `labels` (default: the labels with both values in `target`); equal to compute_metrics' value."""
    if task.type == "regression":
        return float(np.mean(np.abs(np.asarray(prediction, dtype=float).reshape(-1) - np.asarray(target, dtype=float).reshape(-1))))
    truth, score, _ = _columns(task, target, prediction)
    labels = fixed_labels(task, target) if labels is None else labels
    return float(np.mean([roc_auc(score[:, k], truth[:, k]) for k in labels])) if len(labels) else float("nan")


def per_label_auroc(task: Task, target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """AUROC of each class/label (one-vs-rest), NaN where a class has one value only."""
    truth, score, _ = _columns(task, target, prediction)
    return {name: roc_auc(score[:, k], truth[:, k]) for k, name in enumerate(task.classes or (task.name,))}


def best_expert(task: Task, target: np.ndarray, experts: dict[str, np.ndarray]) -> str:
    """The expert with the best point estimate of the task's primary metric on these (test) rows.

    Picking the best single expert on the test set itself flatters it (its score is the largest of several noisy
    estimates, and it was chosen with the very rows it is scored on), so "MoE minus best expert" against it is
    the conservative comparison for the MoE. A NaN score loses; on a tie the first expert in order wins."""
    if not experts:
        raise ValueError("best_expert needs at least one expert")
    name, higher = primary_metric(task)
    evaluator = _Evaluator(task, target)
    scores = {}
    for expert, prediction in experts.items():
        value = float(evaluator.samples(evaluator.prepare(prediction), np.ones((1, len(target))))[name][0])
        scores[expert] = value if np.isfinite(value) else (-np.inf if higher else np.inf)
    return (max if higher else min)(scores, key=scores.get)


# --- the subject-level bootstrap ---------------------------------------------------------------------------


def subject_counts(subjects: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts [R, S], the subject index of each record [N]): resample r draws S subjects with replacement."""
    _, index = np.unique(np.asarray(subjects), return_inverse=True)
    index = index.reshape(-1)
    n_subjects = int(index.max()) + 1 if len(index) else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_subjects, size=(resamples, n_subjects)) + np.arange(resamples)[:, None] * n_subjects
    counts = np.bincount(draws.reshape(-1), minlength=resamples * n_subjects).reshape(resamples, n_subjects)
    return counts.astype(float), index


def _summary(value: float, values: np.ndarray, confidence: float) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return {"value": value, "low": float("nan"), "high": float("nan")}
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return {"value": value, "low": float(low), "high": float(high)}


def evaluate_candidates(
    task: Task,
    truth: np.ndarray,
    candidates: dict[str, np.ndarray],
    subjects: np.ndarray,
    resamples: int,
    confidence: float,
    seed: int,
    pairs: dict[str, tuple[str, str]] | None = None,
) -> dict:
    """Point estimates, subject-level bootstrap intervals and paired differences for every candidate.

    Returns {"models": {name: {metric: {"value", "low", "high"}}},
             "paired": {pair: {metric: {"value", "low", "high"}}}   (pair (a, b): metric(a) - metric(b)),
             "bootstrap": {"unit": "subject", "resamples": R, "resamples_used": n, "labels_used": n,
                           "labels": [...], "subjects": n, "confidence": c, "seed": s}}.
    "resamples_used": for classification the resamples AUROC/AUPRC use (the same for every candidate; the other
    metrics use all R), for regression those where R2 is defined. Deterministic for a seed, and resample r is
    the same whichever candidates are passed."""
    truth = np.asarray(truth)
    n = len(truth)
    subjects = np.asarray(subjects).reshape(-1)
    pairs = dict(pairs or {})
    if not n:
        raise ValueError("evaluate_candidates: no records to evaluate")
    if len(subjects) != n:
        raise ValueError(f"evaluate_candidates: {len(subjects)} subject ids for {n} records")
    for pair, members in pairs.items():
        missing = [c for c in members if c not in candidates]
        if len(members) != 2 or missing:
            raise ValueError(f"evaluate_candidates: pair {pair!r} must name two of the candidates {list(candidates)}; unknown: {missing}")
    resamples = int(resamples)
    counts, index = subject_counts(subjects, resamples, seed)
    evaluator = _Evaluator(task, truth, units=index)
    prepared = {}
    for name, prediction in candidates.items():
        try:
            prepared[name] = evaluator.prepare(prediction)
        except ValueError as error:
            raise ValueError(f"evaluate_candidates: candidate {name!r}: {error}") from None
    # point estimates: every subject once, i.e. every record with weight 1
    ones = np.ones((1, evaluator.n_units))
    points = {name: {m: float(v[0]) for m, v in evaluator.samples(p, ones).items()} for name, p in prepared.items()}
    names = metric_names(task)
    samples = {name: {m: np.full(resamples, np.nan) for m in names} for name in candidates}
    valid = np.zeros(resamples, dtype=bool)
    chunk = max(1, ELEMENTS_PER_CHUNK // max(evaluator.n_units, 1))
    for start in range(0, resamples, chunk):
        rows = slice(start, min(start + chunk, resamples))
        weights = counts[rows]
        keep = evaluator.valid(weights)
        valid[rows] = keep
        kept_t = np.ascontiguousarray(weights[keep].T)
        for name, p in prepared.items():
            for metric, value in evaluator.samples(p, weights, ranked=False).items():
                samples[name][metric][rows] = value
            if task.type != "regression" and keep.any():  # ranked metrics only where every fixed label is defined
                auroc, auprc = evaluator.ranked(p, kept_t)
                samples[name]["auroc"][rows][keep] = auroc
                samples[name]["auprc"][rows][keep] = auprc
    return {
        "models": {name: {m: _summary(points[name][m], samples[name][m], confidence) for m in names} for name in candidates},
        "paired": {
            pair: {m: _summary(points[a][m] - points[b][m], samples[a][m] - samples[b][m], confidence) for m in names}
            for pair, (a, b) in pairs.items()
        },
        "bootstrap": {
            "unit": "subject",
            "resamples": resamples,
            "resamples_used": int(valid.sum()),
            "labels_used": int(len(evaluator.labels)),
            "labels": label_names(task, evaluator.labels),
            "subjects": int(evaluator.n_units),
            "confidence": float(confidence),
            "seed": int(seed),
        },
    }


def bootstrap_metrics(task: Task, target: np.ndarray, prediction: np.ndarray, resamples: int, confidence: float, seed: int, subjects=None) -> dict[str, dict]:
    """{metric: {"value", "low", "high"}} for one set of predictions; each record is its own subject unless `subjects`."""
    subjects = np.arange(len(target)) if subjects is None else subjects
    return evaluate_candidates(task, target, {"model": prediction}, subjects, resamples, confidence, seed)["models"]["model"]
