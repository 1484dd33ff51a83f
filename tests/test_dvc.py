"""`dvc repro` reruns exactly what changed: nothing twice, only the gate for a gate param, never a backbone for a
head param, only the stages that run an edited module, and only the new backbone when one is added; `dvc exp`
runs an experiment whose metrics `dvc exp show` and `dvc metrics diff` compare; a teammate's clone pulls the
corpus and embeddings from a DVC remote and reruns only stage two. Runs the real dvc.yaml in a git repository, on
a tiny corpus that lives outside the project, as a user's does, and checks that nothing DVC runs ever touches it."""

import json

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.stage_one.demo import make_demo_corpus

pytestmark = pytest.mark.slow  # every `dvc repro` starts a process per stage: minutes in all

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def run(folder: Path, *command: str) -> str:
    result = subprocess.run(list(command), cwd=folder, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def repro(folder: Path, *command: str) -> set[str]:
    """Run `dvc repro` (or the given dvc command) and return the names of the stages it ran."""
    return set(re.findall(r"Running stage '([^']+)'", run(folder, str(BIN / "dvc"), *(command or ("repro",)))))


def edit_params(folder: Path, change) -> None:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    change(params)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def touch_module(folder: Path, module: str) -> None:
    """Edit a module of the project copy (a comment: the code the stages run is unchanged)."""
    with open(folder / module, "a") as handle:
        handle.write("# edited\n")


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its sha256 and mtime (ns)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """A user's corpus outside the project: WFDB records, a manifest and a marker file nobody may touch."""
    folder = tmp_path_factory.mktemp("user-data")
    make_demo_corpus(folder, subjects=12, records_per_subject=2, seed=1, workers=1)
    (folder / "DO-NOT-TOUCH.txt").write_text("the user's own file\n")
    return folder, snapshot(folder)


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory, user_data):
    folder = tmp_path_factory.mktemp("dvc")
    for name in ("dvc.yaml", "pipeline", "stages"):
        source = ROOT / name
        (shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__")) if source.is_dir() else shutil.copy(source, folder / name))
    data, _ = user_data

    def tiny(params):
        params["data"] = {"manifest": str(data / "manifest.jsonl"), "root": str(data), "tasks": str(data / "manifest.tasks.yaml")}
        params["demo"].update(subjects=4, records_per_subject=1)
        params["backbones"] = ["dlinear"]
        params["pretrain"] = {"dlinear": {**params["pretrain"]["dlinear"], "epochs": 1, "max_records": 24}}
        params["tasks"] = ["rr_interval"]
        params["heads"].update(epochs=5)
        params["gate"].update(epochs=5)
        params["evaluate"]["bootstrap"] = 20

    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    edit_params(folder, tiny)
    run(folder, "git", "init", "-q")
    run(folder, str(BIN / "dvc"), "init", "-q")
    commit(folder, "project")  # as a clone has: DVCLive needs a repository with a commit
    return folder


def commit(folder: Path, message: str) -> None:
    run(folder, "git", "add", "-A")
    run(folder, "git", "commit", "-q", "-m", message)


def test_repro_reruns_only_what_changed_and_never_touches_the_users_data(dvc_project, user_data):
    first = repro(dvc_project)
    assert {"demo_data", "prepare", "pretrain@dlinear", "extract@dlinear", "fit_gate", "evaluate"} <= first
    assert (dvc_project / "data" / "demo" / "manifest.jsonl").exists()  # the demo writes only its own folder

    assert repro(dvc_project) == set(), "a second repro must do nothing"

    edit_params(dvc_project, lambda p: p["gate"].update(lr=0.002))
    assert repro(dvc_project) == {"fit_gate", "evaluate"}

    edit_params(dvc_project, lambda p: p["heads"].update(lr=0.003))
    assert repro(dvc_project) == {"fit_heads@dlinear", "fit_gate", "evaluate"}

    # an edited stage-two module reruns exactly the stages that run it (an unchanged result stops there)
    touch_module(dvc_project, "pipeline/stage_two/evaluation.py")
    assert repro(dvc_project) == {"evaluate"}
    touch_module(dvc_project, "pipeline/stage_two/metrics.py")  # early stopping's metric: heads and gate too
    assert repro(dvc_project) == {"fit_heads@dlinear", "fit_gate", "evaluate"}
    touch_module(dvc_project, "pipeline/stage_two/heads.py")
    assert repro(dvc_project) == {"fit_heads@dlinear"}

    # experiments: two gate settings, compared by `dvc exp show` and `dvc metrics diff`, params.yaml kept readable
    commit(dvc_project, "baseline")
    before = (dvc_project / "params.yaml").read_text()
    assert repro(dvc_project, "exp", "run", "-n", "slow", "-S", "gate.lr=0.0005") == {"fit_gate", "evaluate"}
    changed_lines = [line for line in (dvc_project / "params.yaml").read_text().splitlines() if line not in before.splitlines()]
    assert changed_lines == ["  lr: 0.0005"], changed_lines  # `-S` changed one value, nothing else (comments, layout)
    shown = json.loads(run(dvc_project, str(BIN / "dvc"), "exp", "show", "--json"))
    metrics = {}
    for commit_entry in shown:
        for experiment in [commit_entry, *[e for exp in commit_entry.get("experiments") or [] for e in exp.get("revs", [])]]:
            data = experiment.get("data") or {}
            values = (data.get("metrics") or {}).get("metrics.json", {}).get("data", {})
            if data.get("name") or experiment.get("name"):
                metrics[data.get("name") or experiment.get("name")] = values
    assert "slow" in metrics, shown
    assert metrics["slow"]["rr_interval"]["moe"] > 0 and "paired" in metrics["slow"]["rr_interval"]
    diff = run(dvc_project, str(BIN / "dvc"), "metrics", "diff", "HEAD", "slow", "--all", "--json")
    assert "rr_interval.moe" in json.loads(diff)["metrics.json"]

    def add_minirocket(params):
        params["backbones"].append("minirocket")
        params["pretrain"]["minirocket"] = {"max_records": 24, "max_fit_records": 24, "seed": 0}

    edit_params(dvc_project, add_minirocket)
    ran = repro(dvc_project)
    assert {"pretrain@minirocket", "extract@minirocket", "fit_heads@minirocket"} <= ran
    assert not ran & {"demo_data", "prepare", "pretrain@dlinear", "extract@dlinear", "fit_heads@dlinear"}

    # team sharing: push to a remote (a local folder here); a fresh clone pulls stage one's outputs and runs stage two
    remote = dvc_project.parent / "remote"
    run(dvc_project, str(BIN / "dvc"), "remote", "add", "-d", "team", str(remote))
    commit(dvc_project, "minirocket, remote")
    run(dvc_project, str(BIN / "dvc"), "push", "-q")
    clone = dvc_project.parent / "clone"
    run(dvc_project.parent, "git", "clone", "-q", str(dvc_project), str(clone))
    run(clone, str(BIN / "dvc"), "pull", "-q", "--with-deps", "extract", "demo_data")
    assert (clone / "embeddings").is_dir() and not list(clone.glob("heads/*/*/predictions.npz"))  # stage two not pulled
    ran = repro(clone)
    assert ran and all(name.split("@")[0] in {"fit_heads", "fit_gate", "evaluate"} for name in ran), ran
    assert json.loads((clone / "metrics.json").read_text()) == json.loads((dvc_project / "metrics.json").read_text())

    data, before = user_data
    assert snapshot(data) == before, "dvc repro changed the user's data folder"
