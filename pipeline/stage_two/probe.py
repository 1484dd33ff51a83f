"""The linear probe every head starts from (preview linear probing, after the ECGFounder post-training study).

A probe is one linear map of the standardised embedding to the head's raw output space (standardised value
for regression, logits otherwise), fitted in closed form on the fold's training rows only:

- ridge regression (scikit-learn `RidgeCV`), its penalty chosen per target by efficient leave-one-out
  cross-validation on those rows (a grid of ALPHAS): by squared error for a regression target, by AUROC for a
  binary label, the metric that is reported. By squared error a rare label's best penalty is often the
  largest, which shrinks it to its intercept and leaves nothing to rank with (PTB-XL subclass, MiniRocket:
  2 of 22 labels of every fold fell back to the prior below, each fold probe's test macro AUROC 0.877-0.886;
  by AUROC 1 label in all three folds, 0.881-0.908);
- for classification the ridge scores are then mapped to logits by a logistic regression on their
  leave-one-out values (per label for binary/multilabel, multinomial over the class scores for multiclass;
  Platt scaling), so the probe is calibrated without ever seeing its own fit. The composition is still one
  linear map, so it initialises the head's output layer exactly.

A label that has one value only in the training rows gets a constant logit at its smoothed training rate, and so
does a label whose leave-one-out scores rank against it (a Platt slope <= 0): where the embedding says nothing
about a label the ridge shrinks to its intercept, whose leave-one-out value (the other rows' mean) is lower for
every positive, and a negative slope fitted to that artefact would turn the probe upside down on new records
(PTB-XL, DLinear's 24-number embedding: test AUROC 0.44 on `form`).
The fit runs on one BLAS thread: a different thread count rounds the eigendecomposition differently, and a
rerun (DVC, another machine, a subprocess) must give the same probe bit for bit.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeCV
from threadpoolctl import threadpool_limits

from pipeline.tasks import Task

ALPHAS = np.logspace(-1, 6, 15)


def _ridge(z: np.ndarray, y: np.ndarray, per_target: bool, scoring: str = "neg_mean_squared_error") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coef [K, D], intercept [K], leave-one-out predictions [N, K]) of ridge with the penalty chosen by LOO `scoring`."""
    ridge = RidgeCV(alphas=ALPHAS, alpha_per_target=per_target, store_cv_results=True, scoring=scoring).fit(z, y)
    chosen = np.searchsorted(ALPHAS, np.broadcast_to(ridge.alpha_, (y.shape[1],)))
    loo = ridge.cv_results_[:, np.arange(y.shape[1]), chosen]
    return np.atleast_2d(ridge.coef_), np.atleast_1d(ridge.intercept_), loo


def _prior_logit(y: np.ndarray) -> np.ndarray:
    rate = (y.sum(0) + 0.5) / (len(y) + 1.0)
    return np.log(rate / (1 - rate))


def fit_probe(task: Task, z: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weight [K, D], bias [K]) mapping standardised embeddings to raw head outputs, fitted on these rows.

    `target` is what the head trains on: the standardised value (regression), 0/1 (binary, [N] or [N, 1]),
    class indices (multiclass), or a 0/1 indicator matrix (multilabel).
    """
    with threadpool_limits(limits=1):
        return _fit_probe(task, np.asarray(z, dtype=np.float64), target)


def _fit_probe(task: Task, z: np.ndarray, target) -> tuple[np.ndarray, np.ndarray]:
    if task.type == "regression":
        coef, intercept, _ = _ridge(z, np.asarray(target, dtype=np.float64).reshape(len(z), 1), per_target=True)
        return coef, intercept
    if task.type == "multiclass":
        return _multiclass_probe(z, np.asarray(target), task.out_dim)
    y = np.asarray(target, dtype=np.float64).reshape(len(z), -1)
    weight, bias = np.zeros((y.shape[1], z.shape[1])), _prior_logit(y)
    varied = np.flatnonzero((y.min(0) != y.max(0)))
    if len(varied):
        coef, intercept, loo = _ridge(z, y[:, varied], per_target=True, scoring="roc_auc")
        for position, label in enumerate(varied):
            slope, offset = _platt(loo[:, [position]], y[:, label].astype(int))
            if slope[0, 0] <= 0:  # no signal: see the module's docstring
                continue
            weight[label] = slope[0, 0] * coef[position]
            bias[label] = slope[0, 0] * intercept[position] + offset[0]
    return weight, bias


def _platt(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression of labels on leave-one-out scores: (slope [K', S], offset [K'])."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on separable labels: the fit is still usable
        model = LogisticRegression(C=100.0, max_iter=1000).fit(scores, labels)
    return model.coef_, model.intercept_


def _multiclass_probe(z: np.ndarray, classes: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    onehot = np.eye(n_classes)[classes]
    present = np.flatnonzero(onehot.sum(0) > 0)
    weight, bias = np.zeros((n_classes, z.shape[1])), np.full(n_classes, -10.0)  # an unseen class: ~e^-10 odds
    if len(present) == 1:
        bias[present] = 0.0
        return weight, bias
    coef, intercept, loo = _ridge(z, onehot[:, present], per_target=False)
    slope, offset = _platt(loo, classes)
    if len(present) == 2:  # scikit-learn's binary form: one logit for the second class
        slope, offset = np.vstack([np.zeros_like(slope), slope]), np.array([0.0, offset[0]])
    weight[present] = slope @ coef
    bias[present] = slope @ intercept + offset
    return weight, bias
