"""The whole chain on a small simulated corpus, through the `enecg` CLI: demo-data -> prepare -> pretrain ->
extract (killed and resumed) -> fit-heads -> fit-gate -> evaluate, with real properties asserted."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.layout import head_dir
from pipeline.manifests import read_manifest
from pipeline.params import load_params
from pipeline.predict import predict_records
from pipeline.stage_one.extract import extract_embeddings
from pipeline.stage_one.signals import QCSettings
from pipeline.stage_two.dataset import load_task_data
from pipeline.stage_two.moe import gate_lead_signals, load_gates, moe_predict
from pipeline.stage_two.predictions import expert_predictions
from pipeline.stores import open_complete

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def enecg(*args):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def small_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(subjects=64, records_per_subject=2)
    params["prepare"]["chunk_records"] = 32
    params["pretrain"]["minirocket"].update(max_records=128, max_fit_records=128)
    params["pretrain"]["dlinear"].update(max_records=128, epochs=2)
    params["extract"]["chunk_records"] = 16
    params["evaluate"]["bootstrap"] = 200
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with the demo corpus prepared and both default backbones pretrained and extracted."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "params.yaml").write_text(yaml.safe_dump(small_params()))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        enecg("demo-data")
        enecg("prepare")
        for model in ("minirocket", "dlinear"):
            enecg("pretrain", "--model", model)
        yield folder


def test_prepare_keeps_every_simulated_record(project):
    corpus = open_complete(project / "corpus.zarr", "enecg prepare")
    assert corpus["signals"].shape == (128, 12, 5000)
    assert corpus["qc_ok"][:].all() and corpus.attrs["summary"]["excluded"] == {}


def test_killed_extract_resumes_and_equals_an_uninterrupted_run(project, monkeypatch):
    monkeypatch.chdir(project)
    for model in ("minirocket", "dlinear"):
        enecg("extract", "--model", model, "--stop-after-chunks", "1")
        assert (project / "embeddings" / f"{model}.zarr.partial").exists()
        assert "'resumed_chunks': 1" in enecg("extract", "--model", model)
        resumed = open_complete(project / "embeddings" / f"{model}.zarr", "extract")
        extract_embeddings(model, Path("corpus.zarr"), Path(f"once-{model}.zarr"), chunk_records=16)
        once = open_complete(Path(f"once-{model}.zarr"), "extract")
        assert np.array_equal(resumed["embedding"][:], once["embedding"][:])
        assert resumed["embedding"].shape[0] == 128 and np.isfinite(resumed["embedding"][:]).all()
        assert resumed.attrs["checkpoint_sha256"] == once.attrs["checkpoint_sha256"]


def test_ensemble_beats_the_training_mean_on_rr_interval(project, monkeypatch):
    monkeypatch.chdir(project)
    enecg("fit-ensemble", "--task", "rr_interval")
    report = json.loads((project / "metrics" / "rr_interval.json").read_text())
    params = load_params()
    data = load_task_data(params, "rr_interval")
    baseline = np.mean(np.abs(data.target[data.test] - data.target[data.train].mean()))
    # The RR interval is measured on the simulated signal: the ensemble must beat predicting the training mean by 10%.
    assert report["models"]["moe"]["mae"]["value"] < 0.9 * baseline
    names = {"probe:minirocket", "probe:dlinear", "expert:minirocket", "expert:dlinear", "mean", "moe"}
    assert set(report["models"]) == names and set(report["paired"]) == {"moe-best", "moe-mean"}
    assert report["bootstrap"]["unit"] == "subject" and report["bootstrap"]["subjects"] == len(set(data.subjects[data.test]))

    gates, config = load_gates(project / "gates" / "rr_interval")
    _, test_folds = expert_predictions(data, config["experts"])
    leads = gate_lead_signals(data.corpus, data.test, config["settings"])
    weights, moe = moe_predict(data.task, gates["moe"], config, leads, test_folds)
    assert weights.shape == (len(data.test), 2) and (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    # each fold model's experts are mixed by their own gate weights, and the mixtures averaged
    fold_weights, fold_moe = moe_predict(data.task, gates["moe"], config, leads, test_folds[:1])
    assert np.allclose(fold_moe[:, 0], (fold_weights * test_folds[0, :, :, 0]).sum(axis=1), atol=1e-4)

    # `enecg predict` on raw records reproduces the ensemble that evaluation computed from the cache.
    records = read_manifest(Path(params["data"]["manifest"]))
    chosen = data.test[:3]
    paths = [Path(params["data"]["root"]) / records[row].path for row in chosen] + [project / "absent_record"]
    assert "does not exist" in enecg("predict", "--task", "rr_interval", *map(str, paths))
    results = predict_records(paths, [data.task], QCSettings())
    excluded = [p for p in results if p.value is None]
    assert [p.record for p in excluded] == [str(paths[-1])] and "does not exist" in excluded[0].reason
    predictions = {p.record: p.value for p in results if p.value is not None}
    for position, path in enumerate(paths[:3]):
        assert abs(predictions[str(path)][0] - moe[position, 0]) < 1e-3 * abs(moe[position, 0])


def test_binary_task_and_deterministic_heads(project, monkeypatch):
    monkeypatch.chdir(project)
    enecg("fit-ensemble", "--task", "irregular")
    report = json.loads((project / "metrics" / "irregular.json").read_text())
    # Irregular rhythm is set by the simulator's heart-rate variability: far above chance (AUROC 0.5).
    assert report["type"] == "binary" and report["models"]["moe"]["auroc"]["value"] > 0.8
    first = dict(np.load(project / head_dir("irregular", "dlinear") / "predictions.npz"))
    enecg("fit-heads", "--task", "irregular", "--model", "dlinear")
    second = dict(np.load(project / head_dir("irregular", "dlinear") / "predictions.npz"))
    for name in first:
        assert np.array_equal(first[name], second[name]), name
