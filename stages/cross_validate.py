"""`enecg cross-validate --task T`: EnECG's k-fold protocol, stage two once per test fold (not a DVC stage)."""

from pipeline.report import show_table
from pipeline.stage_two.crossval import cross_validate
from stages import evaluate, fit_gate, fit_heads, post_train


def run_fold(params: dict, task: str) -> dict:
    for backbone in params["backbones"]:
        fit_heads.run(params, task, backbone)
    for model in params.get("post_trained", []):
        post_train.run(params, task, model)
    fit_gate.run(params, task)
    return evaluate.run(params, task)


def run(params: dict, task: str) -> dict:
    summary = cross_validate(params, task, run_fold)
    columns = {**summary["models"], **summary["paired"]}
    metrics = list(next(iter(columns.values())))
    rows = [[metric, *[f"{c[metric]['mean']:.4g} ± {c[metric]['std']:.2g}" for c in columns.values()]] for metric in metrics]
    show_table(f"{task}: {summary['folds']}-fold subject-wise cross-validation, mean ± std over test folds", ["metric", *columns], rows)
    return summary
