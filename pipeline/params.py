"""params.yaml (DVC's params file): loading, and the fixed artifact layout every stage agrees on."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.errors import ManifestError

REQUIRED = ("data", "prepare", "backbones", "extract", "tasks", "task_definitions", "split", "heads", "gate", "evaluate")

CORPUS = Path("corpus.zarr")


def embeddings_path(backbone: str) -> Path:
    return Path("embeddings") / f"{backbone}.zarr"


def head_dir(task: str, backbone: str) -> Path:
    return Path("heads") / task / backbone


def gate_dir(task: str) -> Path:
    return Path("gates") / task


def metrics_path(task: str) -> Path:
    return Path("metrics") / f"{task}.json"


def plots_path(task: str) -> Path:
    return Path("plots") / task / "predictions.csv"


def load_params(path: Path = Path("params.yaml")) -> dict:
    """The params file as a dict, with its required sections checked (errors name the file and section)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path} does not exist; run enecg from the project folder that holds params.yaml")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(params, dict):
        raise ManifestError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    missing = [section for section in REQUIRED if section not in params]
    if missing:
        raise ManifestError(f"{path}: missing sections {missing}")
    unknown = [task for task in params["tasks"] if task not in params["task_definitions"]]
    if unknown:
        raise ManifestError(f"{path}: tasks {unknown} are not defined under task_definitions")
    return params
