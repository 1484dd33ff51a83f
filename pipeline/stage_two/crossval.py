"""EnECG's reported protocol: k-fold subject-wise cross-validation, each fold in turn the test set.

`enecg cross-validate --task T` runs stage two (fit-heads for every backbone, fit-gate, evaluate) once per
test fold, each in its own folder cv/T/foldI/ that shares the project's corpus, checkpoints and embeddings
(links: stage one runs once), and writes metrics/T.cv.json: every candidate's and every paired difference's
point estimate per fold, and their mean and standard deviation over the folds (EnECG reports mean +- std).

Stage one is shared by the folds, so a backbone that `enecg pretrain` made from the corpus saw (without
labels) the records that other folds test on; it was pretrained on the training records of `split.test_fold`.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import yaml

from pipeline.errors import ManifestError
from pipeline.layout import CORPUS, metrics_path
from pipeline.stores import write_json

SHARED_STAGE_ONE = (CORPUS, Path("checkpoints"), Path("embeddings"))


def fold_params(params: dict, fold: int) -> dict:
    """The params of one test fold: the same, with split.test_fold set (paths made absolute)."""
    params = copy.deepcopy(params)
    params["split"]["test_fold"] = fold
    for key in ("manifest", "root"):
        params["data"][key] = str(Path(params["data"][key]).resolve())
    return params


@contextlib.contextmanager
def fold_folder(task: str, fold: int, params: dict) -> Iterator[Path]:
    """cv/TASK/foldI/ with params.yaml and links to the project's stage-one artifacts; the block runs inside it."""
    folder = Path("cv") / task / f"fold{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHARED_STAGE_ONE:
        link = folder / name
        if not link.is_symlink() and Path(name).exists():
            link.symlink_to(Path(name).resolve(), target_is_directory=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    here = Path.cwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(here)


def summarise(reports: list[dict]) -> dict:
    """Per candidate (and paired difference) and metric: the per-fold values, their mean and std (ddof=1)."""
    def over_folds(section: str) -> dict:
        out = {}
        for name in reports[0][section]:
            out[name] = {}
            for metric in reports[0][section][name]:
                values = np.array([report[section][name][metric]["value"] for report in reports], dtype=float)
                out[name][metric] = {"folds": values.tolist(), "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))}
        return out

    return {"task": reports[0]["task"], "type": reports[0]["type"], "folds": len(reports), "models": over_folds("models"), "paired": over_folds("paired"),
            "n_test": [report["n_test"] for report in reports], "best_expert": [report["best_expert"] for report in reports]}


def cross_validate(params: dict, task: str, run_fold: Callable[[dict, str], dict]) -> dict:
    """Run `run_fold(params, task) -> metrics report` for every test fold; write and return the summary."""
    if params["split"]["method"] != "cv":
        raise ManifestError(f"params.yaml: split.method: cross-validate needs 'cv', got {params['split']['method']!r}")
    reports = []
    for fold in range(int(params["split"]["k"])):
        folded = fold_params(params, fold)
        with fold_folder(task, fold, folded):
            reports.append(run_fold(folded, task))
    summary = summarise(reports)
    write_json(Path(str(metrics_path(task)).replace(".json", ".cv.json")), summary)
    return summary
