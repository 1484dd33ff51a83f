"""`enecg predict` on a small trained project built here in seconds: two experts (DLinear with random weights,
and a test backbone of per-lead statistics), fold heads with non-zero LoRA adapters, random gates.

Checks: the peft-free chain equals the peft one; records named with extensions; the out-of-distribution flag
(signal quality and embedding distance) on simulated ECGs, real PTB-XL records and Gaussian noise with a valid
header; the CLI's table, --json, --out, --plot and exit codes."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from typer.testing import CliRunner

from pipeline import predict as chain
from pipeline.cli import app
from pipeline.ecg import LEADS_12
from pipeline.layout import gate_dir, head_dir
from pipeline.stage_one import backbones as registry
from pipeline.stage_one.backbones import (
    Backbone,
    BackboneConfig,
    InputSpec,
    build_backbone,
)
from pipeline.stage_one.demo import Morphology, _write_record, simulate_record
from pipeline.stage_one.extract import backbone_inputs, embed_batches
from pipeline.stage_one.signals import QCSettings, load_canonical
from pipeline.stores import create_records_array
from pipeline.tasks import task_from_params
from tests.conftest import DATA

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
TASKS = {
    "rr_interval": {"type": "regression", "label": "rr_interval"},
    "irregular": {"type": "binary", "label": "irregular"},
    "rate_class": {"type": "multiclass", "label": "rate_class", "classes": ["brady", "normal", "tachy"]},
}
EXPERTS = ["dlinear", "test-stats"]
STATS = BackboneConfig(name="test-stats", spec=InputSpec(sampling_rate=100.0, samples=1000), embedding_dim=24, checkpoint_file="none", source="tests")


class StatsBackbone(Backbone):
    """Per lead: log amplitude and mean absolute slope (a stand-in second expert that needs no training)."""

    config = STATS

    def forward(self, x):
        return {"embedding": torch.cat([x.std(-1).log1p(), 10 * x.diff(dim=-1).abs().mean(-1)], dim=1)}


def simulated(count: int, seed: int, subject_records: int = 4):
    """`count` simulated ECGs [5000, 12] with labels and subject numbers, `subject_records` per subject."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        subject = index // subject_records
        if index % subject_records == 0:
            morphology, resting = Morphology.draw(np.random.default_rng([seed, subject])), rng.uniform(50, 110)
        rate, irregular = float(np.clip(resting + rng.normal(0, 8), 45, 130)), bool(rng.random() < 0.5)
        signal, rr = simulate_record(rate, irregular, int(rng.integers(2**31 - 1)), morphology)
        bpm = 60000 / rr
        labels = {"rr_interval": rr, "irregular": float(irregular), "rate_class": 0 if bpm < 60 else 2 if bpm > 100 else 1}
        out.append((f"{seed}-{subject}", signal, labels))
    return out


def write_noise(directory: Path, name: str, seed: int, independent: bool = True) -> Path:
    """Gaussian noise in a valid 12-lead header; `independent=False` derives the limb leads from I and II."""
    noise = np.random.default_rng(seed).normal(0, 0.3, (5000, 12))
    if not independent:
        i, ii = noise[:, 0], noise[:, 1]
        noise[:, 2:6] = np.stack([ii - i, -(i + ii) / 2, i - ii / 2, ii - i / 2], axis=1)
    _write_record(directory, name, noise)
    return directory / name


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """heads/, gates/, embeddings/, corpus.zarr (subject ids) and checkpoints/ for EXPERTS, trained on 80
    simulated records of 40 subjects; records/ holds new subjects' ECGs and noise."""
    from pipeline.stage_two.gate import Gate
    from pipeline.stage_two.heads import fit_head, save_head
    from pipeline.stage_two.moe import save_gates

    folder = tmp_path_factory.mktemp("predict")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["tasks"] = "tasks.yaml"
    params["tasks"] = list(TASKS)
    (folder / "tasks.yaml").write_text(yaml.safe_dump(TASKS))
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setitem(registry._REGISTRY, STATS.name, (STATS, lambda path: StatsBackbone()))
        registry.get_config("dlinear")  # the registry is complete before the test backbone joins it
        (folder / "checkpoints" / "dlinear").mkdir(parents=True)
        (folder / "checkpoints" / STATS.name).mkdir()
        (folder / "checkpoints" / STATS.name / "none").write_bytes(b"")
        weights = torch.Generator().manual_seed(0)
        torch.save({f"Linear_{part}.{kind}": torch.randn(shape, generator=weights) * 0.05 for part in ("Seasonal", "Trend") for kind, shape in (("weight", (1, 500)), ("bias", (1,)))},
                   folder / "checkpoints" / "dlinear" / "checkpoint.pth")
        train = simulated(80, seed=1, subject_records=2)
        signals = np.stack([np.round(signal.T * 1000) / 1000 for _, signal, _ in train]).astype(np.float32)  # as read from WFDB
        subjects = np.array([subject for subject, _, _ in train])
        create_records_array(zarr.open_group(str(folder / "corpus.zarr"), mode="w"), "subject_id", (len(train),), len(train), str)[:] = subjects
        embeddings = {}
        for name in EXPERTS:
            model = build_backbone(name)
            embeddings[name] = embed_batches(model, backbone_inputs(signals, 500, list(LEADS_12), model), 16, torch.device("cpu"))["embedding"]
            group = zarr.open_group(str(folder / "embeddings" / f"{name}.zarr"), mode="w")
            create_records_array(group, "embedding", embeddings[name].shape, 32, "float32")[:] = embeddings[name]
        heads = {**params["heads"], "epochs": 3, "hidden": 32}
        fold_of = np.array([int(s.split("-")[1]) % 2 for s in subjects])
        rows = np.arange(len(train))
        for task_name in TASKS:
            task = task_from_params(task_name, TASKS)
            target = np.array([labels[task_name] for _, _, labels in train], np.int64 if task.type == "multiclass" else np.float32)
            for name in EXPERTS:
                for fold in range(2):
                    fit = rows[fold_of != fold]
                    fitted = fit_head(task, embeddings[name][fit], target[fit], subjects[fit], heads, seed=fold)
                    for key, value in fitted.model.named_parameters():  # adapters far from zero: the merge shows
                        if "lora_" in key:
                            value.data.normal_(0, 0.05, generator=weights)
                    save_head(fitted.model, head_dir(task_name, name) / f"fold{fold}")
                np.savez(head_dir(task_name, name) / "predictions.npz", train_rows=rows, test_rows=rows[:0])
            settings = {**params["gate"], "channels": 4, "hidden": 8}
            n_outputs = len(EXPERTS) * task.out_dim
            gate = Gate(1, n_outputs, len(EXPERTS), ["leads", "outputs"], 4, 8)
            for value in gate.parameters():
                value.data.normal_(0, 0.3, generator=weights)
            gate.lead_scale.fill_(0.2)
            config = {"experts": EXPERTS, "rows": rows, "settings": settings, "target_scale": float(np.std(target)) if task.type == "regression" else 1.0,
                      "n_leads": 1, "n_outputs": n_outputs, "variants": {"moe": {"inputs": ["leads", "outputs"], "history": {}}}}
            save_gates({"moe": gate}, config, gate_dir(task_name), {})
        records = folder / "records"
        records.mkdir()
        for row, (_, signal, _) in enumerate(simulated(6, seed=2, subject_records=2)):  # new subjects
            _write_record(records, f"ecg{row}", signal)
        write_noise(records, "noise0", 0)
        write_noise(records, "noise1", 1)
        write_noise(records, "noise_limb", 2, independent=False)
        yield folder


def tasks():
    return [task_from_params(name, TASKS) for name in TASKS]


def test_records_are_named_with_or_without_an_extension(project):
    record = project / "records" / "ecg0"
    for given in ("ecg0", "ecg0.hea", "ecg0.dat", "ecg0.mat", "ecg0.HEA"):
        assert chain.record_path(project / "records" / given) == record
    assert chain.record_path(Path("other/x.y")) == Path("other/x.y")
    loaded, excluded = chain.load_records([record, Path(f"{record}.hea"), Path(f"{record}.dat"), project / "absent.hea"], QCSettings())
    assert list(loaded) == [str(record)]
    assert list(excluded) == [str(project / "absent")] and "does not exist" in excluded[str(project / "absent")]


def test_heads_without_peft_give_the_peft_chain(project):
    """The heads read without peft (LoRA merged, folds stacked) and the Predictor give what load_head (peft) +
    moe_predict give: each fold's merged state equals peft's merge_and_unload, the predictions peft's unmerged."""
    from pipeline.stage_two.gate import lead_signals
    from pipeline.stage_two.heads import load_head, predict
    from pipeline.stage_two.moe import load_gates, moe_predict

    names = [str(project / "records" / f"ecg{i}") for i in range(4)]
    signals = np.stack([load_canonical(Path(name), QCSettings()) for name in names])
    predictor = chain.Predictor(tasks(), QCSettings())
    got = predictor.predict(names, signals)
    embeddings = predictor.embed(signals)
    for task in tasks():
        for name in EXPERTS:  # each fold's state: what peft's own merge gives
            for fold in sorted(head_dir(task.name, name).glob("fold*")):
                merged = {key: value.numpy() for key, value in load_head(fold).merge_and_unload().state_dict().items()}
                mine = chain._fold_arrays(fold)
                assert set(mine) == set(merged)
                for key, value in merged.items():
                    np.testing.assert_allclose(mine[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
        gates, config = load_gates(gate_dir(task.name))
        folds = np.stack([
            np.stack([predict(task, load_head(fold), embeddings[name]) for fold in sorted(head_dir(task.name, name).glob("fold*"))])
            for name in EXPERTS
        ], axis=2)
        merged = np.stack([predictor.heads[task.name, name].predict_folds(embeddings[name]) for name in EXPERTS], axis=2)
        np.testing.assert_allclose(merged, folds, rtol=2e-5, atol=2e-5)
        weights, moe = moe_predict(task, gates["moe"], config, lead_signals(signals, list(LEADS_12), ["II"], 500, 50), folds)
        mine = [p for p in got if p.task == task.name]
        assert [p.record for p in mine] == names
        np.testing.assert_allclose(np.stack([p.value for p in mine]), moe, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([[p.weights[name] for name in EXPERTS] for p in mine], weights, atol=1e-6)
        for e, name in enumerate(EXPERTS):
            np.testing.assert_allclose(np.stack([p.experts[name] for p in mine]), folds.mean(0)[:, e], rtol=1e-4, atol=1e-5)
    assert len({round(p.weights["dlinear"], 4) for p in got}) > 1  # the gate weighs records differently


def test_records_embedded_in_slices_give_the_batched_embeddings(project):
    """Predictor.embed (slices of the records in parallel threads, one torch thread each) gives what one batched
    embed_batches gives, and leaves torch's thread count as it was."""
    names = [str(project / "records" / f"ecg{i}") for i in range(5)]
    signals = np.stack([load_canonical(Path(name), QCSettings()) for name in names])
    predictor = chain.Predictor(tasks(), QCSettings(), "cpu", batch_size=2)
    predictor.workers = 3  # slices of 2, 2 and 1 records, whatever the machine's cores
    threads = torch.get_num_threads()
    got = predictor.embed(signals)
    assert torch.get_num_threads() == threads
    for name, model in predictor.backbones.items():
        whole = embed_batches(model, backbone_inputs(signals, 500, list(LEADS_12), model), 8, torch.device("cpu"))["embedding"]
        np.testing.assert_allclose(got[name], whole, rtol=1e-6, atol=1e-6, err_msg=name)
    predictor.predict(names, signals)
    assert torch.get_num_threads() == threads


def test_signal_quality_flags_noise_and_not_ecgs(project):
    settings = QCSettings()
    ecgs = [chain.signal_quality(load_canonical(project / "records" / f"ecg{i}", settings), 500) for i in range(6)]
    assert all(q.reasons == [] for q in ecgs), [q.reasons for q in ecgs]
    assert max(q.limb_residual for q in ecgs) < 0.1 and min(q.qrs_kurtosis for q in ecgs) > 5
    for name in ("noise0", "noise1"):
        noise = chain.signal_quality(load_canonical(project / "records" / name, settings), 500)
        assert noise.limb_residual > 1.2 and noise.qrs_kurtosis < 3.4
        assert any("Einthoven" in r for r in noise.reasons) and any("QRS" in r for r in noise.reasons)
    # noise whose limb leads obey Einthoven's law still has no QRS complexes
    limb = chain.signal_quality(load_canonical(project / "records" / "noise_limb", settings), 500)
    assert limb.limb_residual < 0.1 and [r for r in limb.reasons if "QRS" in r] == limb.reasons != []
    ecg = load_canonical(project / "records" / "ecg0", settings)
    clipped = np.clip(ecg, -0.15, 0.15)
    assert any("clipped" in r for r in chain.signal_quality(clipped, 500).reasons)
    off = ecg.copy()
    off[7, 1000:3000] = 0.0  # V2 off for 4 s
    assert any("flat for" in r for r in chain.signal_quality(off, 500).reasons)


def test_signal_quality_passes_real_ecgs():
    """Real PTB-XL records (40 at each rate) are not flagged."""
    root = DATA / "ptbxl-500"
    if not root.exists():
        pytest.skip(f"{root} is absent (the shared real-data folder)")
    paths = sorted((root / "records500").rglob("*.hea"))[::12] + sorted((root / "records100").rglob("*.hea"))[6::12]
    flagged = {}
    for path in paths:
        quality = chain.signal_quality(load_canonical(path.with_suffix(""), QCSettings()), 500)
        if quality.reasons:
            flagged[path.name] = quality.reasons
    assert len(paths) >= 80 and not flagged, flagged


def test_embedding_distance_flags_noise_not_new_subjects(project):
    predictor = chain.Predictor(tasks(), QCSettings())
    assert set(predictor.references) == set(EXPERTS)
    names = [str(project / "records" / f"ecg{i}") for i in range(6)] + [str(project / "records" / "noise_limb")]
    signals = np.stack([load_canonical(Path(name), QCSettings()) for name in names])
    by_record = {p.record: p for p in predictor.predict(names, signals) if p.task == "rr_interval"}
    for name in names[:-1]:
        assert max(by_record[name].distance.values()) < chain.DISTANCE_RATIO_MAX, by_record[name].distance
        assert not by_record[name].out_of_distribution
    noise = by_record[names[-1]]
    assert max(noise.distance.values()) > chain.DISTANCE_RATIO_MAX and any("unlike the training" in f for f in noise.flags)


def invoke(*args):
    return runner.invoke(app, ["predict", *map(str, args)])


def test_cli_reports_predictions_experts_and_flags(project, tmp_path):
    records = project / "records"
    result = invoke(f"{records / 'ecg0'}.hea", records / "ecg1", f"{records / 'ecg1'}.dat", records / "noise0", project / "absent",
                    "--out", tmp_path / "out.csv", "--plot", tmp_path / "plots")
    assert result.exit_code == 0, result.output
    assert f"{project / 'absent'}.hea does not exist" in result.output.replace("\n", "")  # the reason in full
    assert "out of distribution" in result.output and "Einthoven" in result.output
    with open(tmp_path / "out.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * len(TASKS)  # ecg0, ecg1 (named twice), noise0, absent
    by = {(Path(row["record"]).name, row["task"]): row for row in rows}
    assert by["ecg0", "rr_interval"]["out_of_distribution"] == "False" and by["noise0", "irregular"]["out_of_distribution"] == "True"
    assert float(by["ecg0", "rr_interval"]["dlinear_weight"]) + float(by["ecg0", "rr_interval"]["test-stats_weight"]) == pytest.approx(1, abs=1e-5)
    assert {"p_brady", "p_normal", "p_tachy", "value"} <= set(rows[0]) and "does not exist" in by["absent", "rate_class"]["excluded"]
    pictures = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pictures == ["ecg0.png", "ecg1.png", "noise0.png"] and all((tmp_path / "plots" / p).stat().st_size > 10_000 for p in pictures)

    result = invoke(records / "ecg2", records / "noise1", "--json", "--out", tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "out.json").read_text())
    ecg, noise = report["records"]
    assert not ecg["out_of_distribution"] and noise["out_of_distribution"] and noise["quality"]["qrs_kurtosis"] < 3.6
    rr = ecg["tasks"]["rr_interval"]
    assert set(rr["experts"]) == set(EXPERTS) and isinstance(rr["prediction"], float)
    assert set(ecg["tasks"]["rate_class"]["prediction"]) == {"brady", "normal", "tachy"}


def test_cli_fails_when_nothing_was_predicted(project):
    result = invoke(project / "absent", project / "records" / "missing.hea")
    assert result.exit_code == 1
    assert "none of the 2 records could be predicted" in result.output
    result = invoke(project / "records" / "ecg0", "--out", "predictions.txt")
    assert result.exit_code == 1 and ".csv or .json" in result.output
