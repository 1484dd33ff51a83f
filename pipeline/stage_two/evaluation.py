"""Stage two, last step: every candidate on the held-out test subjects, with subject-level bootstrap statistics.

Candidates: each expert's probe (`probe:B`, the linear probe its heads started from), each expert (`expert:B`,
the mean of its k fold heads), their plain mean (`mean`), the MoE (`moe`) and any gate ablations
(`moe:constant`, ...). The ensemble is judged by paired differences from the same resamples: `moe-best`
(MoE minus the best single expert on these rows, the conservative choice) and `moe-mean`.
"""

from __future__ import annotations

import numpy as np

from pipeline.layout import gate_dir
from pipeline.stage_two.dataset import TaskData
from pipeline.stage_two.metrics import best_expert, evaluate_candidates, per_label_auroc
from pipeline.stage_two.moe import gate_lead_signals, load_gates, moe_predict
from pipeline.stage_two.predictions import expert_predictions
from pipeline.stores import provenance, strings


def test_candidates(data: TaskData) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """(candidate name -> test predictions [n_test, K], gate variant -> mean weights [n_test, E], gate config)."""
    gates, config = load_gates(gate_dir(data.task.name))
    backbones = config["experts"]
    _, test_folds = expert_predictions(data, backbones)
    _, probe_folds = expert_predictions(data, backbones, prefix="probe_")
    experts, probes = test_folds.mean(axis=0), probe_folds.mean(axis=0)
    candidates = {f"probe:{name}": probes[:, e] for e, name in enumerate(backbones)}
    candidates |= {f"expert:{name}": experts[:, e] for e, name in enumerate(backbones)}
    candidates["mean"] = experts.mean(axis=1)
    leads = gate_lead_signals(data.corpus, data.test, config["settings"])
    weights = {}
    for name, gate in gates.items():
        weights[name], candidates[name] = moe_predict(data.task, gate, config, leads, test_folds)
    return candidates, weights, config


def weights_by_class(data: TaskData, weights: np.ndarray, backbones: list[str]) -> dict[str, dict[str, float]]:
    """Mean gate weight per expert among the test records of each class (positives of each label; for
    regression, each third of the target's range), so one sees whether the gate specialises."""
    truth, task = data.target[data.test], data.task
    if task.type == "regression":
        edges = np.quantile(truth, [1 / 3, 2 / 3])
        groups = {"low third": truth <= edges[0], "middle third": (truth > edges[0]) & (truth <= edges[1]), "high third": truth > edges[1]}
    elif task.type == "binary":
        groups = {"0": truth.reshape(-1) < 0.5, "1": truth.reshape(-1) >= 0.5}
    elif task.type == "multiclass":
        groups = {name: truth == k for k, name in enumerate(task.classes)}
    else:
        groups = {name: truth[:, k] >= 0.5 for k, name in enumerate(task.classes)}
    return {name: dict(zip(backbones, weights[mask].mean(axis=0).round(4).tolist())) for name, mask in groups.items() if mask.any()}


def evaluate_task(data: TaskData, settings: dict) -> tuple[dict, list[dict]]:
    """The metrics report (models, paired differences, bootstrap block, gate weights) and the plot rows."""
    candidates, weights, config = test_candidates(data)
    backbones = config["experts"]
    truth = data.target[data.test]
    best = best_expert(data.task, truth, {name: candidates[f"expert:{name}"] for name in backbones})
    report = evaluate_candidates(
        data.task, truth, candidates, data.subjects[data.test],
        resamples=int(settings["bootstrap"]), confidence=float(settings["confidence"]), seed=int(settings["seed"]),
        pairs={"moe-best": ("moe", f"expert:{best}"), "moe-mean": ("moe", "mean")},
    )
    report = {
        "task": data.task.name, "type": data.task.type, "n_train": int(len(data.train)), "n_test": int(len(data.test)),
        "best_expert": best, **report,
        "gate_weights": {"mean": dict(zip(backbones, weights["moe"].mean(axis=0).round(4).tolist())), "by_class": weights_by_class(data, weights["moe"], backbones)},
    }
    if data.task.type in ("multiclass", "multilabel"):
        report["per_label_auroc"] = per_label_auroc(data.task, truth, candidates["moe"])
    report["provenance"] = provenance(gate=config.get("provenance"))
    return report, prediction_rows(data, truth, candidates["mean"], candidates["moe"])


def prediction_rows(data: TaskData, truth: np.ndarray, mean: np.ndarray, moe: np.ndarray) -> list[dict]:
    """One row per test record for DVC plots: the target and the mean and MoE predictions, in readable form."""
    ids = strings(data.corpus["record_id"])[data.test]
    task = data.task
    if task.type in ("regression", "binary"):
        actual = float if task.type == "regression" else int
        return [{"record_id": i, "actual": actual(t), "mean": float(m[0]), "moe": float(e[0])} for i, t, m, e in zip(ids, truth, mean, moe)]
    if task.type == "multiclass":
        return [{"record_id": i, "actual": task.classes[t], "predicted": task.classes[int(e.argmax())]} for i, t, e in zip(ids, truth, moe)]
    join = lambda flags: ";".join(name for name, flag in zip(task.classes, flags) if flag)  # noqa: E731
    return [{"record_id": i, "actual": join(t >= 0.5), "predicted": join(e >= 0.5)} for i, t, e in zip(ids, truth, moe)]
