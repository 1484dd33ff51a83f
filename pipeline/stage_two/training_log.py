"""Training curves logged with DVCLive, so that `dvc plots show` draws them and `dvc exp show` lists their summaries.

The heads and gates record their curves while they train (histories {"train": [...], "validation": [...]},
validation[0] being the held-out loss before the first epoch); a stage hands them here once fitting is done:
- `live.log_plot` writes every fold's (or gate variant's) train and held-out loss per epoch as one table,
  DIR/plots/custom/NAME.json, drawn by dvc.yaml with the `enecg_training` template (a panel per fold or
  variant, a line per split);
- the summary, DIR/metrics.json (DVC metrics), kept to a few columns so `dvc exp show` stays readable: for an
  expert's heads, the mean over its folds of the epochs trained and of the held-out loss of the kept weights,
  and the worst fold's; for the gates, under gates.TASK.VARIANT, each variant's epochs and held-out loss. Every
  fold's own numbers are in the curves (and heads/BACKBONE/TASK/meta.json).

Each stage logs into a folder of its own, beside the other tasks it trains there: fit_heads (one stage per
backbone, every task) into dvclive/heads/BACKBONE/, post_train (one stage per task) into
dvclive/heads/MODEL-post/TASK/, fit_gate (every task) into dvclive/gates/; the curves of a task are
plots/custom/TASK.json and its summary is metrics.json's heads.TASK (gates.TASK).

DVCLive writes no dvc.yaml (dvc.yaml declares these files), saves no experiment of its own and makes no
report: `dvc exp run` / `dvc repro` already do that work.
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.layout import post_trained_model
from pipeline.stage_two.plot_data import kept_epoch, training_rows

HEADS_LOG = Path("dvclive/heads")
GATES_LOG = Path("dvclive/gates")


def heads_log_dir(task: str, expert: str) -> Path:
    """The DVCLive folder of the stage that trains `expert` for `task` (see above)."""
    return HEADS_LOG / expert / (task if post_trained_model(expert) else "")


def best_loss(history: dict[str, list[float]]) -> float:
    """The held-out loss of the kept weights (see `kept_epoch`; NaN where none was recorded)."""
    return history["validation"][kept_epoch(history)] if history.get("validation") else float("nan")


def heads_summary(histories: dict[str, dict[str, list[float]]]) -> dict[str, float | int]:
    best = [best_loss(h) for h in histories.values()]
    finite = [b for b in best if math.isfinite(b)] or [float("nan")]
    return {"folds": len(histories), "epochs": sum(len(h.get("train", [])) for h in histories.values()) / max(len(histories), 1),
            "best_validation_loss": sum(finite) / len(finite), "worst_fold_best_validation_loss": max(finite)}


def gates_summary(histories: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float | int]]:
    return {variant: {"epochs": len(h.get("train", [])), "best_validation_loss": best_loss(h)} for variant, h in histories.items()}


def _log(directory: Path, name: str, histories: dict, title: str, keep_others: bool):
    # imported here: DVCLive pulls in DVC's repo machinery, which commands that log nothing need not pay for
    from dvclive import Live

    live = Live(dir=str(directory), resume=keep_others, save_dvc_exp=False, dvcyaml=None, report=None)
    live.step = None  # no step: these curves were logged after the fact, so metrics.json gets no "step" key
    live.log_plot(name, training_rows(histories), x="epoch", y="loss", template="enecg_training", title=title)
    return live


def log_heads(task: str, expert: str, histories: dict[str, dict[str, list[float]]]) -> Path:
    """One expert's fold heads of a task (curve name "foldI" -> history) -> heads_log_dir, beside the stage's other tasks."""
    directory = heads_log_dir(task, expert)
    with _log(directory, task, histories, f"{task} / {expert} heads, loss per epoch", keep_others=True) as live:
        live.summary.setdefault("heads", {})[task] = heads_summary(histories)
    return directory / "plots" / "custom" / f"{task}.json"


def log_gates(task: str, histories: dict[str, dict[str, list[float]]]) -> Path:
    """A task's gate variants (variant -> history) -> dvclive/gates/, beside the other tasks' (fit-gate's
    tasks run one after the other into the one folder that dvc.yaml declares)."""
    with _log(GATES_LOG, task, histories, f"{task}: MoE gate, loss per epoch", keep_others=True) as live:
        live.summary.setdefault("gates", {})[task] = gates_summary(histories)
    return GATES_LOG / "plots" / "custom" / f"{task}.json"
