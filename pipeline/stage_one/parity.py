"""Parity of the native backbones with their reference implementations, on the shared fixtures.

Each fixture folder (see ../shared/fixtures/backbones/README.md) holds a small random-weight checkpoint in
the published container, an `input.npy`, and the reference's `expected_*.npy`. Each backbone module
exposes `parity_outputs(fixture_dir) -> {expected_name: array}`: it loads the checkpoint through the
project's own loader and runs the raw model (no preprocessing) on the input. The test suite asserts the
tolerances; `benchmarks/parity.py` records the max abs differences.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np

# fixture folder -> backbone module that reproduces it
FIXTURE_MODULES = {
    "ecgfm-pretrained": "ecgfm",
    "ecgfm-finetuned": "ecgfm",
    "ecgfounder-12lead": "ecgfounder",
    "ecgfounder-1lead": "ecgfounder",
    "hubert-ecg": "hubert_ecg",
    "moment": "moment",
    "tempo": "tempo",
    "enecg-dlinear": "dlinear",
    "enecg-timesnet": "timesnet",
}


def fixture_outputs(fixture_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{expected_name: (native output, reference output)} for one fixture folder."""
    module = importlib.import_module(f"pipeline.stage_one.backbones.{FIXTURE_MODULES[fixture_dir.name]}")
    outputs = module.parity_outputs(fixture_dir)
    return {name: (np.asarray(got), np.load(fixture_dir / f"{name}.npy")) for name, got in outputs.items()}


def max_abs_difference(got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        raise AssertionError(f"shape {got.shape} != expected {expected.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))


def fixture_tolerance(fixture_dir: Path) -> tuple[float, float]:
    """The fixture's stated (atol, rtol) from its config.json; 1e-5 for either where it states none."""
    tolerance = json.loads((fixture_dir / "config.json").read_text()).get("tolerance", {})
    return float(tolerance.get("atol", 1e-5)), float(tolerance.get("rtol", 1e-5))
