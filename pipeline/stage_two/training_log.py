"""Training curves logged with DVCLive, so that `dvc plots show` draws them and `dvc exp show` lists their summaries.

The heads and gates record their curves while they train (histories {"train": [...], "validation": [...]},
validation[0] being the held-out loss before the first epoch); a stage hands them here once fitting is done:
- `live.log_plot` writes every fold's (or gate variant's) train and held-out loss per epoch as one table,
  DIR/plots/custom/NAME.json, drawn by dvc.yaml with the `enecg_training` template (a panel per fold, a line per
  split);
- the summary, DIR/metrics.json (DVC metrics): per fold, its epochs, best held-out loss and the epoch of it,
  and its last training loss.

DVCLive writes no dvc.yaml (dvc.yaml declares these files), saves no experiment of its own and makes no
report: `dvc exp run` / `dvc repro` already do that work.
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.stage_two.plot_data import training_rows

HEADS_LOG = Path("dvclive/heads")
GATES_LOG = Path("dvclive/gates")


def heads_log_dir(task: str, backbone: str) -> Path:
    return HEADS_LOG / task / backbone


def summary(history: dict[str, list[float]]) -> dict[str, float | int]:
    validation = [v for v in history.get("validation", []) if math.isfinite(v)]
    train = history.get("train", [])
    out: dict[str, float | int] = {"epochs": len(train)}
    if validation:
        best = min(range(len(validation)), key=validation.__getitem__)
        out |= {"best_validation_loss": validation[best], "best_epoch": best}
    if train:
        out["last_train_loss"] = train[-1]
    return out


def log_training(directory: Path, name: str, histories: dict[str, dict[str, list[float]]], title: str, keep_others: bool = False) -> Path:
    """Log the curves `histories` (curve name -> history) as DVCLive custom plot NAME in `directory`, and their
    summaries under NAME (or at the top, for NAME "training") in its metrics.json. `keep_others`: keep what
    other runs logged in that directory (the gates of other tasks), rather than starting it afresh."""
    from dvclive import Live  # imported here: it pulls in DVC's repo machinery, which other commands need not pay for

    with Live(dir=str(directory), resume=keep_others, save_dvc_exp=False, dvcyaml=None, report=None) as live:
        live.step = None  # no step: these curves were logged after the fact, so metrics.json gets no "step" key
        live.log_plot(name, training_rows(histories), x="epoch", y="loss", template="enecg_training", title=title)
        summaries = {curve: summary(history) for curve, history in histories.items()}
        if name == "training":
            live.summary.update(summaries)
        else:
            live.summary[name] = summaries
    return directory / "plots" / "custom" / f"{name}.json"
