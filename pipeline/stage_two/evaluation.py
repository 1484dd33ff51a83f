"""Stage two, last step: every candidate on the held-out test subjects, with subject-level bootstrap statistics.

Candidates: each expert's probe (`probe:B`, the linear probe its heads started from), each expert (`expert:B`,
the mean of its k fold heads), their plain mean (`mean`: equal weights, mixed as the gate mixes), the MoE (`moe`) and any gate ablations
(`moe:constant`, ...). The ensemble is judged by paired differences from the same resamples: `moe-best`
(MoE minus the best single expert on these rows, the conservative choice) and `moe-mean`.
"""

from __future__ import annotations

import numpy as np

from pipeline.layout import gate_dir
from pipeline.stage_two.dataset import TaskData
from pipeline.stage_two.gate import plain_mean
from pipeline.stage_two.metrics import best_expert, evaluate_candidates, per_label_auroc
from pipeline.stage_two.moe import gate_lead_signals, load_gates, moe_predict
from pipeline.stage_two.plot_data import class_groups
from pipeline.stage_two.predictions import expert_predictions
from pipeline.stores import provenance


Tested = tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]  # what test_candidates returns


def test_candidates(data: TaskData) -> Tested:
    """(candidate name -> test predictions [n_test, K], gate variant -> mean weights [n_test, E], gate config):
    computed once per task and shared by the metrics (`evaluate_task`) and the plots."""
    gates, config = load_gates(gate_dir(data.task.name))
    backbones = config["experts"]
    _, test_folds = expert_predictions(data, backbones)
    _, probe_folds = expert_predictions(data, backbones, prefix="probe_")
    experts, probes = test_folds.mean(axis=0), probe_folds.mean(axis=0)
    candidates = {f"probe:{name}": probes[:, e] for e, name in enumerate(backbones)}
    candidates |= {f"expert:{name}": experts[:, e] for e, name in enumerate(backbones)}
    candidates["mean"] = np.mean([plain_mean(data.task, fold) for fold in test_folds], axis=0)  # the gates' start, mixed as they mix
    leads = gate_lead_signals(data.corpus, data.test, config["settings"])
    weights = {}
    for name, gate in gates.items():
        weights[name], candidates[name] = moe_predict(data.task, gate, config, leads, test_folds)
    return candidates, weights, config


def weights_by_class(data: TaskData, weights: np.ndarray, backbones: list[str]) -> dict[str, dict[str, float]]:
    """Mean gate weight per expert among the test records of each class group (pipeline.stage_two.plot_data.class_groups:
    positives of each label; for regression, each third of the target's range), so one sees whether the gate specialises."""
    groups = class_groups(data.task, data.target[data.test])
    return {name: dict(zip(backbones, weights[mask].mean(axis=0).round(4).tolist())) for name, mask in groups.items() if mask.any()}


def evaluate_task(data: TaskData, settings: dict, tested: Tested | None = None) -> dict:
    """The metrics report (models, paired differences, bootstrap block, gate weights) of `tested` (test_candidates)."""
    candidates, weights, config = tested if tested is not None else test_candidates(data)
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
    return report
