"""What the evaluation's pictures show, as tidy rows (lists of dicts): one table per kind of plot, the same
tables feeding DVC's vega plots (`plot_data/KIND/TASK.json`) and the matplotlib PNGs (`plots/TASK/*.png`).

Curves are drawn for every expert, their plain mean and the MoE (probes and gate ablations are left to the
metrics table). Their "groups" (one panel each):
- binary: the positive class;
- multiclass: each class one-vs-rest (with a positive and a negative among the test records);
- multilabel: the macro average (ROC: mean TPR on a common FPR grid; precision-recall: mean interpolated
  precision on a common recall grid) and the TOP_LABELS most frequent labels;
- regression: one group, the task; it has no ROC or precision-recall curve, but a binned calibration curve
  (mean actual value per decile of the prediction) and predicted vs actual per record (SCATTER_EXPERTS best
  experts, the mean and the MoE).
Beside the curves: the MoE's confusion matrix (per record: actual and predicted class names) and the gate's
weights (summaries: mean by true class, distribution over the test records).

Within a table every row has the same keys: DVC reads a table whose rows differ in keys as no data.
Every curve's rows carry `point` (its order along the curve, so a vertical ROC step is drawn as one) and
reference rows (`reference: true`: the chance diagonal of a ROC, the prevalence of a precision-recall panel,
the identity of a calibration diagram), so that any renderer draws them without knowing the kind.
"""

from __future__ import annotations

import json

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from pipeline.layout import gate_dir, head_dir
from pipeline.tasks import Task

TOP_LABELS = 4  # multilabel: the most frequent labels drawn beside the macro average
CALIBRATION_BINS = 10
MAX_CURVE_POINTS = 200  # a curve with more vertices is thinned evenly (its ends kept)
GRID = np.linspace(0.0, 1.0, 101)  # the common grid of macro-averaged curves
MACRO = "macro"
SCATTER_EXPERTS = 2  # regression: the experts (of lowest MAE) drawn beside the mean and the MoE in predicted vs actual


def curve_candidates(candidates: dict) -> list[str]:
    """The candidates a curve is drawn for, in order: every expert, the plain mean, the MoE."""
    return [name for name in candidates if name.startswith("expert:")] + [name for name in ("mean", "moe") if name in candidates]


def label_matrix(task: Task, truth: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(truth as a boolean [N, K] one-vs-rest matrix, the K column names); binary: one column, the task."""
    truth = np.asarray(truth)
    if task.type == "multiclass":
        return truth.reshape(-1, 1) == np.arange(len(task.classes)), list(task.classes)
    if task.type == "multilabel":
        return truth.reshape(len(truth), -1) >= 0.5, list(task.classes)
    return truth.reshape(-1, 1) >= 0.5, [task.name]


def score_matrix(prediction: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(prediction, dtype=float).reshape(n, -1)


def _usable_columns(matrix: np.ndarray) -> list[int]:
    """The label columns with a positive and a negative among the records (a curve needs both)."""
    count = matrix.sum(0)
    return [k for k in range(matrix.shape[1]) if 0 < count[k] < len(matrix)]


def curve_groups(task: Task, truth: np.ndarray, top: int = TOP_LABELS) -> list[tuple[str, int | None]]:
    """(panel name, label column or None for the macro average) for every ROC / PR / calibration panel."""
    if task.type == "regression":
        return []
    matrix, names = label_matrix(task, truth)
    usable = _usable_columns(matrix)
    if task.type != "multilabel":
        return [(names[k], k) for k in usable]
    count = matrix.sum(0)
    frequent = sorted(usable, key=lambda k: (-count[k], k))[:top]
    return ([(MACRO, None)] if usable else []) + [(names[k], k) for k in frequent]


def _thin(*columns: np.ndarray, limit: int = MAX_CURVE_POINTS) -> list[np.ndarray]:
    n = len(columns[0])
    if n <= limit:
        return list(columns)
    keep = np.unique(np.linspace(0, n - 1, limit).round().astype(int))
    return [column[keep] for column in columns]


def _rows(group: str, series: str, xname: str, yname: str, xs, ys, reference: bool = False) -> list[dict]:
    return [{"group": group, "series": series, "point": i, xname: round(float(x), 5), yname: round(float(y), 5), "reference": reference}
            for i, (x, y) in enumerate(zip(xs, ys))]


def _roc(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=True)
    return fpr, tpr


def _pr(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) from the highest threshold down, i.e. recall increasing (scikit-learn's, reversed)."""
    precision, recall, _ = precision_recall_curve(positive, score, drop_intermediate=True)
    return recall[::-1], precision[::-1]


def _macro_roc(matrix: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tprs = [np.interp(GRID, *_roc(matrix[:, k], scores[:, k])) for k in _usable_columns(matrix)]
    tpr = np.mean(tprs, axis=0)
    tpr[0] = 0.0
    return GRID, tpr


def _macro_pr(matrix: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean interpolated precision (the best precision at a recall of at least r) on the recall grid."""
    curves = []
    for k in _usable_columns(matrix):
        recall, precision = _pr(matrix[:, k], scores[:, k])
        best = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
        index = np.searchsorted(recall, GRID, side="left").clip(max=len(recall) - 1)
        curves.append(best[index])
    return GRID, np.mean(curves, axis=0)


def _curve_rows(task: Task, truth: np.ndarray, candidates: dict[str, np.ndarray], names: tuple[str, str], curve, macro, reference) -> list[dict]:
    """Rows of `curve(positive, score) -> (x, y)` (`macro(matrix, scores)` for the macro panel) of every curve
    candidate in every group, and each group's `reference(matrix, k) -> (series, xs, ys)`."""
    matrix, _ = label_matrix(task, truth)
    rows = []
    for group, k in curve_groups(task, truth):
        for name in curve_candidates(candidates):
            scores = score_matrix(candidates[name], len(matrix))
            xs, ys = macro(matrix, scores) if k is None else curve(matrix[:, k], scores[:, k])
            rows += _rows(group, name, *names, *_thin(xs, ys))
        series, xs, ys = reference(matrix, k)
        rows += _rows(group, series, *names, xs, ys, reference=True)
    return rows


def roc_rows(task: Task, truth: np.ndarray, candidates: dict[str, np.ndarray]) -> list[dict]:
    """ROC curves (`fpr`, `tpr`) of every curve candidate in every group, and each group's chance diagonal."""
    return _curve_rows(task, truth, candidates, ("fpr", "tpr"), _roc, _macro_roc, lambda matrix, k: ("chance", [0.0, 1.0], [0.0, 1.0]))


def _prevalence(matrix: np.ndarray, k: int | None) -> tuple[str, list[float], list[float]]:
    """A classifier at chance on a precision-recall panel: the positives' share (macro: over the usable labels)."""
    prevalence = float(matrix[:, _usable_columns(matrix)].mean()) if k is None else float(matrix[:, k].mean())
    return "prevalence", [0.0, 1.0], [prevalence, prevalence]


def pr_rows(task: Task, truth: np.ndarray, candidates: dict[str, np.ndarray]) -> list[dict]:
    """Precision-recall curves (`recall`, `precision`) and each group's prevalence (a classifier at chance)."""
    return _curve_rows(task, truth, candidates, ("recall", "precision"), _pr, _macro_pr, _prevalence)


def _binned_regression(actual: np.ndarray, predicted: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean prediction, mean actual, count) per quantile bin of the prediction."""
    edges = np.unique(np.quantile(predicted, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, max(len(edges) - 2, 0))
    used = np.unique(which)
    return (np.array([predicted[which == b].mean() for b in used]), np.array([actual[which == b].mean() for b in used]),
            np.array([(which == b).sum() for b in used]))


def _binned_probability(positive: np.ndarray, score: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted probability, fraction of positives, count) per non-empty uniform bin: the bins of
    scikit-learn's `calibration_curve(strategy="uniform")` (same values), with the counts it does not return."""
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], np.clip(score, 0.0, 1.0))
    count = np.bincount(which, minlength=bins)
    used = count > 0
    mean = lambda values: np.bincount(which, weights=values, minlength=bins)[used] / count[used]  # noqa: E731
    return mean(np.clip(score, 0.0, 1.0)), mean(positive.astype(float)), count[used]


def calibration_rows(task: Task, truth: np.ndarray, candidates: dict[str, np.ndarray], bins: int = CALIBRATION_BINS) -> list[dict]:
    """Reliability diagrams (`predicted`, `observed`, `count`): for classification, the fraction of positives per
    bin of predicted probability (uniform bins, empty ones left out; multilabel macro: the labels pooled); for
    regression, the mean actual value per quantile bin of the prediction. Plus the identity (perfect calibration)."""
    rows = []
    if task.type == "regression":
        actual = np.asarray(truth, dtype=float).reshape(-1)
        low, high = float(actual.min()), float(actual.max())
        for name in curve_candidates(candidates):
            predicted = np.asarray(candidates[name], dtype=float).reshape(-1)
            x, y, count = _binned_regression(actual, predicted, bins)
            rows += [{**row, "count": int(c)} for row, c in zip(_rows(task.name, name, "predicted", "observed", x, y), count)]
            low, high = min(low, float(x.min())), max(high, float(x.max()))
        return rows + [{**r, "count": 0} for r in _rows(task.name, "identity", "predicted", "observed", [low, high], [low, high], reference=True)]
    matrix, _ = label_matrix(task, truth)
    for group, k in curve_groups(task, truth):
        columns = _usable_columns(matrix) if k is None else [k]
        positive = matrix[:, columns].reshape(-1)
        for name in curve_candidates(candidates):
            score = score_matrix(candidates[name], len(matrix))[:, columns].reshape(-1)
            x, y, count = _binned_probability(positive, score, bins)
            rows += [{**row, "count": int(c)} for row, c in zip(_rows(group, name, "predicted", "observed", x, y), count)]
        rows += [{**r, "count": 0} for r in _rows(group, "identity", "predicted", "observed", [0.0, 1.0], [0.0, 1.0], reference=True)]
    return rows


def areas(rows: list[dict], xname: str, yname: str) -> dict[tuple[str, str], float]:
    """(group, series) -> area under its curve (trapezoidal, in point order), for legends."""
    found: dict[tuple[str, str], list] = {}
    for row in rows:
        if not row["reference"]:
            found.setdefault((row["group"], row["series"]), []).append((row["point"], row[xname], row[yname]))
    out = {}
    for key, points in found.items():
        points.sort()
        xs, ys = np.array([p[1] for p in points]), np.array([p[2] for p in points])
        out[key] = float(auc(xs, ys)) if len(xs) > 1 and np.all(np.diff(xs) >= 0) else float("nan")
    return out


def class_groups(task: Task, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Group name -> mask of test records: each class (multiclass), 0/1 (binary), the positives of each label
    (multilabel; a record may be in several), the thirds of the target's range (regression); the gate table's
    groups and those of the metrics' gate weights by class (pipeline.stage_two.evaluation.weights_by_class)."""
    truth = np.asarray(truth)
    if task.type == "regression":
        edges = np.quantile(truth, [1 / 3, 2 / 3])
        return {"low third": truth <= edges[0], "middle third": (truth > edges[0]) & (truth <= edges[1]), "high third": truth > edges[1]}
    if task.type == "binary":
        return {"0": truth.reshape(-1) < 0.5, "1": truth.reshape(-1) >= 0.5}
    if task.type == "multiclass":
        return {name: truth == k for k, name in enumerate(task.classes)}
    return {name: truth[:, k] >= 0.5 for k, name in enumerate(task.classes)}


BY_CLASS, OVER_RECORDS = "mean by true class", "over the test records"  # the gate table's two views


def gate_rows(task: Task, truth: np.ndarray, weights: np.ndarray, experts: list[str]) -> list[dict]:
    """The MoE gate's weights [n_test, E] (mean over the fold models), in two views (`view`):
    - BY_CLASS: per true class group (class_groups; multilabel: the TOP_LABELS most frequent labels, a record
      counting in each of its labels) and expert, the mean `weight` and the group's `records`;
    - OVER_RECORDS: per expert, the distribution over every test record: median (`weight`), quartiles (`q1`,
      `q3`) and extremes (`low`, `high`).
    Summaries rather than a row per record and expert, so that the table stays small on a large test set.
    Every row has every key (DVC reads a table whose rows differ in keys as no data): a BY_CLASS row's
    quartiles and extremes are its mean."""
    groups = {name: mask for name, mask in class_groups(task, truth).items() if mask.any()}
    if task.type == "multilabel":
        groups = dict(sorted(groups.items(), key=lambda item: -item[1].sum())[:TOP_LABELS])
    def row(view: str, group: str, expert: str, records: int, *quantiles: float) -> dict:
        low, q1, median, q3, high = (round(float(q), 5) for q in quantiles)
        return {"view": view, "class": group, "expert": expert, "weight": median, "q1": q1, "q3": q3, "low": low, "high": high, "records": records}

    rows = []
    for group, mask in groups.items():
        rows += [row(BY_CLASS, group, expert, int(mask.sum()), *[weights[mask, e].mean()] * 5) for e, expert in enumerate(experts)]
    rows += [row(OVER_RECORDS, "all test records", expert, len(weights), *np.quantile(weights[:, e], [0, 0.25, 0.5, 0.75, 1]))
             for e, expert in enumerate(experts)]
    return rows


def confusion_rows(task: Task, truth: np.ndarray, prediction: np.ndarray, record_ids) -> list[dict]:
    """One row per test record (multilabel: per record and frequent label) with the `actual` and `predicted`
    class names, for a confusion matrix (DVC's `confusion` template counts them). Thresholds as the metrics:
    argmax (multiclass), 0.5 (binary, multilabel). Regression: none (see predicted_vs_actual_rows)."""
    if task.type == "regression":
        return []
    n = len(truth)
    score = score_matrix(prediction, n)
    if task.type == "multiclass":
        actual, predicted = np.asarray(truth).reshape(-1), score.argmax(1)
        return [{"record_id": str(i), "actual": task.classes[a], "predicted": task.classes[p]} for i, a, p in zip(record_ids, actual, predicted)]
    matrix, names = label_matrix(task, truth)
    says = lambda name, flag: name if flag else f"not {name}"  # noqa: E731
    columns = [k for _, k in curve_groups(task, truth) if k is not None] if task.type == "multilabel" else [0]
    return [{"record_id": str(record_ids[r]), "label": names[k], "actual": says(names[k], matrix[r, k]), "predicted": says(names[k], score[r, k] >= 0.5)}
            for k in columns for r in range(n)]


def predicted_vs_actual_rows(task: Task, truth: np.ndarray, candidates: dict[str, np.ndarray], record_ids) -> list[dict]:
    """Regression: one row per test record (`actual`, `predicted`) for each of the SCATTER_EXPERTS experts of
    lowest MAE, the plain mean and the MoE (every expert's MAE is in metrics/TASK.json); other types: none."""
    if task.type != "regression":
        return []
    actual = np.asarray(truth, dtype=float).reshape(-1)
    predicted = {name: np.asarray(candidates[name], dtype=float).reshape(-1) for name in curve_candidates(candidates)}
    mae = {name: float(np.mean(np.abs(p - actual))) for name, p in predicted.items()}
    experts = sorted((name for name in predicted if name.startswith("expert:")), key=mae.__getitem__)[:SCATTER_EXPERTS]
    shown = [name for name in predicted if name in experts or not name.startswith("expert:")]
    return [{"record_id": str(i), "series": name, "actual": round(float(a), 5), "predicted": round(float(p), 5)}
            for name in shown for i, a, p in zip(record_ids, actual, predicted[name])]


def training_histories(task: str, experts: list[str]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Every recorded training curve of a task: expert -> {"foldI": history} (heads/B/TASK/meta.json) and
    "gate" -> {variant: history} (gates/TASK/gate.json); those not on disk are left out."""
    found = {}
    for expert in experts:
        meta = head_dir(task, expert) / "meta.json"
        if meta.exists():
            found[expert] = {f"fold{i}": h for i, h in enumerate(json.loads(meta.read_text()).get("histories", []))}
    config = gate_dir(task) / "gate.json"
    if config.exists():
        found["gate"] = {name: v["history"] for name, v in json.loads(config.read_text())["variants"].items() if v.get("history")}
    return {owner: curves for owner, curves in found.items() if curves}


def kept_epoch(history: dict[str, list[float]]) -> int:
    """The epoch whose weights training kept (0: the start): the lowest held-out score where one was recorded
    (see pipeline.stage_two.training.fit), else the lowest held-out loss."""
    return int(np.nanargmin(history.get("score") or history["validation"]))


def training_rows(histories: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Training curves as rows (`group`: the fold or gate variant, `series`: train or validation, `epoch`, `loss`).
    A history's validation[0] is the held-out loss before the first epoch (epoch 0); train[i] is epoch i + 1."""
    rows = []
    for group, history in histories.items():
        for series, start in (("train", 1), ("validation", 0)):
            values = history.get(series, [])
            rows += [{"group": group, "series": series, "point": i, "epoch": start + i, "loss": round(float(v), 6), "reference": False}
                     for i, v in enumerate(values) if np.isfinite(v)]
    return rows


def plot_tables(task: Task, truth: np.ndarray, candidates: dict[str, np.ndarray], weights: np.ndarray, experts: list[str], record_ids) -> dict[str, list[dict]]:
    """Every evaluation table by kind (the `plot_data/KIND/` folders); a kind that does not apply is empty.
    Within a table every row has the same keys, as DVC's plots need."""
    classification = task.type != "regression"
    return {
        "roc": roc_rows(task, truth, candidates) if classification else [],
        "precision_recall": pr_rows(task, truth, candidates) if classification else [],
        "calibration": calibration_rows(task, truth, candidates),
        "confusion": confusion_rows(task, truth, candidates["moe"], record_ids),
        "predicted_vs_actual": predicted_vs_actual_rows(task, truth, candidates, record_ids),
        "gate": gate_rows(task, truth, weights, experts),
    }
