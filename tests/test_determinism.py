"""Determinism and provenance of stage two, and `predict` on bad records, on a small cheap corpus.

The same inputs and seeds give the same heads, gate and metrics bit for bit on the CPU: the chain runs once
in this process and once as a fresh `enecg` process (another PYTHONHASHSEED, so nothing may depend on set
or dict-of-str order). Every artifact records what produced it, and the records link up the chain.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.layout import head_dir
from pipeline.predict import predict_records
from pipeline.stores import open_complete
from pipeline.tasks import task_from_params
from tests.test_bad_records import make_records
from tests.test_kill_resume import ENECG, ENV, artifact, make_project, prepare_in_process, qc_settings

pytestmark = pytest.mark.slow
TASK = "rr_interval"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Corpus prepared, MiniRocket fitted, both default backbones extracted; no stage-two artifact yet."""
    folder = tmp_path_factory.mktemp("determinism")
    params = make_project(folder)
    from stages import extract, pretrain

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        prepare_in_process(params, Path("corpus.zarr"))
        pretrain.run(params, "minirocket")
        for model in params["backbones"]:
            extract.run(params, model)
    return folder, params


def stage_two(folder: Path) -> dict[str, object]:
    """heads, gate and metrics of the task, file by file."""
    files = {}
    for part in ("heads", f"gates/{TASK}"):  # heads/BACKBONE/TASK/ of every backbone
        files.update({f"{part}/{name}": content for name, content in artifact(folder / part).items()})
    files["metrics"] = (folder / "metrics" / f"{TASK}.json").read_bytes()
    return files


def test_heads_gate_and_metrics_are_the_same_bits_when_run_twice(project, monkeypatch):
    folder, _ = project
    monkeypatch.chdir(folder)
    # both runs as DVC makes them, each a new process (the suite's own process has other tests' thread settings)
    once = subprocess.run([str(ENECG), "fit-ensemble", "--task", TASK], cwd=folder, env=ENV, capture_output=True, text=True, timeout=300)
    assert once.returncode == 0, once.stderr[-3000:]
    first = stage_two(folder)
    assert len(first) > 10 and any(name.endswith("moe.safetensors") for name in first)
    again = subprocess.run([str(ENECG), "fit-ensemble", "--task", TASK], cwd=folder, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    second = stage_two(folder)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_every_artifact_records_what_produced_it(project, monkeypatch):
    folder, params = project
    monkeypatch.chdir(folder)
    if not (folder / "gates" / TASK).exists():
        CliRunner().invoke(app, ["fit-ensemble", "--task", TASK], catch_exceptions=False)
    corpus = open_complete(folder / "corpus.zarr", "prepare").attrs["provenance"]
    assert corpus["enecg_version"] and len(corpus["manifest_sha256"]) == 64 and corpus["qc"]["sampling_rate"] == 500
    for model in params["backbones"]:
        store = open_complete(folder / "embeddings" / f"{model}.zarr", "extract").attrs
        produced = store["provenance"]
        assert produced["corpus"] == corpus and produced["checkpoint_sha256"] == store["checkpoint_sha256"]
        assert produced["spec"] == store["spec"] and produced["enecg_version"] == corpus["enecg_version"]
        head = json.loads((folder / head_dir(TASK, model) / "meta.json").read_text())["provenance"]
        assert head["embeddings"] == produced and head["heads"] == json.loads(json.dumps(params["heads"]))
        assert head["split"] == params["split"] and head["enecg_version"]
    gate = json.loads((folder / "gates" / TASK / "gate.json").read_text())
    assert gate["provenance"]["gate"] == json.loads(json.dumps(params["gate"])) and gate["provenance"]["enecg_version"]
    metrics = json.loads((folder / "metrics" / f"{TASK}.json").read_text())
    assert metrics["provenance"]["gate"] == gate["provenance"]


def test_predict_excludes_bad_records_with_their_reason(project, tmp_path, monkeypatch):
    folder, params = project
    monkeypatch.chdir(folder)
    if not (folder / "gates" / TASK).exists():
        CliRunner().invoke(app, ["fit-ensemble", "--task", TASK], catch_exceptions=False)
    cases = make_records(tmp_path, real=False)
    task = task_from_params(TASK, params["task_definitions"])
    predictions = {Path(p.record).name: p for p in predict_records([tmp_path / case.name for case in cases], [task], qc_settings(params))}
    assert len(predictions) == len(cases)
    for case in cases:
        prediction = predictions[case.name]
        if case.expect is None and case.name != "short_8s":  # params keep min_seconds 10
            assert prediction.reason == "" and np.isfinite(prediction.value).all(), (case.name, prediction.reason)
        elif case.expect is not None:
            reason = prediction.reason.removeprefix(f"{tmp_path / case.name}: ")
            assert prediction.value is None and re.search(case.expect.replace("7 s minimum", "10 s minimum"), reason), (case.name, reason)
    # Handled the same way, the resampled, converted and reordered copies of one signal get nearly one prediction.
    kept = [predictions[name].value[0] for name in ("good", "rate_1000", "units_uV", "units_V", "lead_order", "frank_leads")]
    assert np.ptp(kept) < 0.05 * abs(np.mean(kept)), kept
