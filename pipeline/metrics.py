"""Metrics per task type (scikit-learn), with percentile bootstrap confidence intervals.

Predictions are in the ensemble's space (values, or probabilities). Classification thresholds: 0.5 for
binary and multilabel, argmax for multiclass; for multilabel, accuracy is the subset accuracy. AUROC/AUPRC
are macro over classes (one-vs-rest) and skip a class that has only one value in the sample; a bootstrap
resample where a metric is undefined is left out of that metric's interval.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as sk

from pipeline.tasks import Task


def _macro_auc(score, y_true: np.ndarray, y_prob: np.ndarray) -> float:
    values = [score(y_true[:, k], y_prob[:, k]) for k in range(y_true.shape[1]) if 0 < y_true[:, k].sum() < len(y_true)]
    return float(np.mean(values)) if values else float("nan")


def _classification(y_true: np.ndarray, y_pred: np.ndarray, y_onehot: np.ndarray, y_prob: np.ndarray) -> dict:
    precision, recall, f1, _ = sk.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    return {
        "accuracy": float(sk.accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auroc": _macro_auc(sk.roc_auc_score, y_onehot, y_prob),
        "auprc": _macro_auc(sk.average_precision_score, y_onehot, y_prob),
    }


def compute_metrics(task: Task, target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """All metrics of the task's type for one set of predictions."""
    if task.type == "regression":
        value = prediction.reshape(-1)
        return {
            "mae": float(sk.mean_absolute_error(target, value)),
            "mse": float(sk.mean_squared_error(target, value)),
            "r2": float(sk.r2_score(target, value)) if len(target) > 1 else float("nan"),
        }
    if task.type == "binary":
        probability = prediction.reshape(-1)
        truth = target.astype(int)
        return _classification(truth, (probability >= 0.5).astype(int), truth[:, None], probability[:, None])
    if task.type == "multiclass":
        onehot = np.eye(task.out_dim)[target]
        return _classification(target, prediction.argmax(1), onehot, prediction)
    truth = target.astype(int)  # multilabel: indicator matrices; accuracy is then the subset accuracy
    return _classification(truth, (prediction >= 0.5).astype(int), truth, prediction)


def bootstrap_metrics(task: Task, target: np.ndarray, prediction: np.ndarray, resamples: int, confidence: float, seed: int) -> dict[str, dict]:
    """{metric: {"value", "low", "high"}}: the point estimate and its percentile bootstrap interval."""
    point = compute_metrics(task, target, prediction)
    rng = np.random.default_rng(seed)
    samples = {name: [] for name in point}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(resamples):
            index = rng.integers(0, len(target), len(target))
            for name, value in compute_metrics(task, target[index], prediction[index]).items():
                samples[name].append(value)
    tail = (1 - confidence) / 2 * 100
    result = {}
    for name, value in point.items():
        values = np.asarray(samples[name], dtype=float)
        values = values[np.isfinite(values)]
        low, high = (np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan))
        result[name] = {"value": value, "low": float(low), "high": float(high)}
    return result


def per_label_auroc(task: Task, target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """AUROC of each class/label (one-vs-rest), NaN where a class has one value only."""
    truth = np.eye(task.out_dim)[target] if task.type == "multiclass" else target.reshape(len(target), -1)
    return {
        name: float(sk.roc_auc_score(truth[:, k], prediction[:, k])) if 0 < truth[:, k].sum() < len(truth) else float("nan")
        for k, name in enumerate(task.classes or (task.name,))
    }
