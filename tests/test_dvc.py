"""`dvc repro` reruns exactly what changed: nothing twice, only the gate for a gate param, never a backbone for a
head param, and only the new backbone when one is added. Runs the real dvc.yaml on a tiny demo corpus."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def repro(folder: Path) -> set[str]:
    """Run `dvc repro` and return the names of the stages it ran."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(BIN / "dvc"), "repro"], cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return set(re.findall(r"Running stage '([^']+)'", result.stdout))


def edit_params(folder: Path, change) -> None:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    change(params)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dvc")
    for name in ("dvc.yaml", "pipeline"):
        source = ROOT / name
        (shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__")) if source.is_dir() else shutil.copy(source, folder / name))

    def tiny(params):
        params["demo"].update(subjects=12, records_per_subject=2)
        params["backbones"] = ["dlinear"]
        params["pretrain"] = {"dlinear": {**params["pretrain"]["dlinear"], "epochs": 1, "max_records": 24}}
        params["tasks"] = ["rr_interval"]
        params["heads"].update(epochs=5)
        params["gate"].update(epochs=5)
        params["evaluate"]["bootstrap"] = 20

    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    edit_params(folder, tiny)
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=folder, check=True)
    return folder


def test_repro_reruns_only_what_changed(dvc_project):
    first = repro(dvc_project)
    assert {"demo_data", "prepare", "pretrain@dlinear", "extract@dlinear", "fit_gate@rr_interval"} <= first

    assert repro(dvc_project) == set(), "a second repro must do nothing"

    edit_params(dvc_project, lambda p: p["gate"].update(lr=0.002))
    assert repro(dvc_project) == {"fit_gate@rr_interval", "evaluate@rr_interval"}

    edit_params(dvc_project, lambda p: p["heads"].update(lr=0.003))
    assert repro(dvc_project) == {"fit_heads@rr_interval-dlinear", "fit_gate@rr_interval", "evaluate@rr_interval"}

    def add_minirocket(params):
        params["backbones"].append("minirocket")
        params["pretrain"]["minirocket"] = {"max_records": 24, "max_fit_records": 24, "seed": 0}

    edit_params(dvc_project, add_minirocket)
    ran = repro(dvc_project)
    assert {"pretrain@minirocket", "extract@minirocket", "fit_heads@rr_interval-minirocket"} <= ran
    assert not ran & {"demo_data", "prepare", "pretrain@dlinear", "extract@dlinear", "fit_heads@rr_interval-dlinear"}
