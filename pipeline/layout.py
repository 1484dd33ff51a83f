"""The fixed artifact layout every stage agrees on (paths relative to the project folder)."""

from __future__ import annotations

from pathlib import Path

CORPUS = Path("corpus.zarr")
SUMMARY = Path("metrics.json")  # every task's headline metrics (DVC metrics)
DEMO_ROOT = Path("data/demo")  # the demo corpus's own folder: never the user's data root


def embeddings_path(backbone: str) -> Path:
    return Path("embeddings") / f"{backbone}.zarr"


def head_dir(task: str, backbone: str) -> Path:
    """heads/EXPERT/TASK/: an expert's models and predictions for one task (a backbone's heads, or a post-trained
    network). Expert first: one fit_heads stage trains every task of a backbone (heads/BACKBONE/ is its output)."""
    return Path("heads") / backbone / task


POST_TRAINED_SUFFIX = "-post"


def post_trained_expert(model: str) -> str:
    """The expert name of a network post-trained on the labels (`enecg post-train --model ecgfounder`:
    "ecgfounder-post"), distinct from the frozen backbone's heads ("ecgfounder")."""
    return model + POST_TRAINED_SUFFIX


def post_trained_model(expert: str) -> str | None:
    """The network a post-trained expert was made from, or None for a backbone's heads."""
    return expert.removesuffix(POST_TRAINED_SUFFIX) if expert.endswith(POST_TRAINED_SUFFIX) else None


def gate_dir(task: str) -> Path:
    return Path("gates") / task


def metrics_path(task: str) -> Path:
    return Path("metrics") / f"{task}.json"


def figures_dir(task: str) -> Path:
    """plots/TASK/: the task's pictures as PNG files (matplotlib), shown by `dvc plots show` and `enecg report`."""
    return Path("plots") / task


def plot_table_path(kind: str, task: str) -> Path:
    """plot_data/KIND/TASK.json: the rows of one kind of plot (roc, calibration, ...) that DVC's vega plots draw."""
    return Path("plot_data") / kind / f"{task}.json"


REPORT = Path("report.html")  # `enecg report`: the whole run in one self-contained page
