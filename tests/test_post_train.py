"""Post-training (`enecg post-train`): Net1D with stochastic depth and preview linear probing, fine-tuned on a task's
labels, is an expert of the ensemble; a gate hold-out keeps stacking it leak-free. The network pieces are checked
alone, then the whole chain runs on a tiny simulated corpus with a tiny Net1D (post-train, 12-lead and lead I,
beside MiniRocket heads; fit-gate; evaluate), and a rerun with the gate hold-out's labels and signals replaced
shows that no expert's model depends on any row the gate trains on."""

import ast
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from typer.testing import CliRunner

from pipeline.cli import POST_TRAINABLE_NAMES, app
from pipeline.errors import ManifestError
from pipeline.layout import head_dir
from pipeline.params import POST_TRAINABLE, load_params, validate
from pipeline.splits import make_split
from pipeline.stage_one.backbones import build_backbone
from pipeline.stage_one.backbones.ecgfounder import (
    PUBLISHED_12_LEAD,
    Net1D,
    Net1DShape,
    load_net1d,
    post_training_net,
    write_checkpoint,
)
from pipeline.stage_one.demo import TASKS as DEMO_TASKS
from pipeline.stage_one.extract import extract_embeddings
from pipeline.stage_two.dataset import load_task_data
from pipeline.stage_two.post_train import fold_classifier, set_preview_probe, uses_preview_probe, warmup_cosine
from pipeline.stage_two.probe import fit_probe
from pipeline.stores import open_complete
from pipeline.tasks import Task
from stages import fit_gate, fit_heads, post_train

ROOT = Path(__file__).resolve().parents[1]
SMALL = Net1DShape(in_channels=12, base_filters=16, filters=(16, 32, 48), blocks=(2, 1, 2), n_classes=3)
PARAMS = {**yaml.safe_load((ROOT / "params.yaml").read_text()), "task_definitions": DEMO_TASKS}
TASK = "irregular"
runner = CliRunner()


def enecg(*args) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_drop_path_is_the_identity_in_eval_mode_and_at_rate_zero_and_rises_with_depth():
    torch.manual_seed(0)
    x = torch.randn(4, 12, 700)
    plain = Net1D(SMALL)
    dropping = Net1D(SMALL, stochastic_depth=0.5)
    dropping.load_state_dict(plain.state_dict())  # the rate is no weight: the same checkpoint keys
    rates = [block.drop_rate for stage in dropping.stage_list for block in stage.block_list]
    np.testing.assert_allclose(rates, np.linspace(0, 0.5, 5))
    with torch.no_grad():
        reference = plain.eval()(x)
        for output, expected in zip(dropping.eval()(x), reference):
            torch.testing.assert_close(output, expected, rtol=0, atol=0)
        for output, expected in zip(plain.train()(x), reference):  # rate 0 in training: the same function
            torch.testing.assert_close(output, expected, rtol=0, atol=0)
        torch.manual_seed(1)
        assert not torch.equal(dropping.train()(x)[0], reference[0])


def test_sizes_keep_the_architecture():
    assert PUBLISHED_12_LEAD.scaled(1, 1) == PUBLISHED_12_LEAD
    sizes = PARAMS["post_train"]["sizes"]
    cpu = PUBLISHED_12_LEAD.scaled(sizes["cpu"]["width"], sizes["cpu"]["depth"])
    assert cpu.filters == (16, 48, 48, 96, 96, 256, 256) and cpu.blocks == (1, 1, 1, 2, 2, 2, 2)
    assert all(width % cpu.groups_width == 0 for width in (cpu.base_filters, *cpu.filters))
    assert sizes["published"] == {"width": 1, "depth": 1, "sampling_rate": 500}


def test_warmup_then_cosine():
    factor = warmup_cosine(4, 20)
    assert [factor(step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(12) == pytest.approx(0.5) and factor(20) == pytest.approx(0.0) and factor(30) == pytest.approx(0.0)


def test_preview_probe_auto_probes_a_checkpoints_features_only():
    assert uses_preview_probe({"preview_probe": "auto", "init": "checkpoint"})
    assert not uses_preview_probe({"preview_probe": "auto", "init": "random"})  # a probe of random features hurt
    assert uses_preview_probe({"preview_probe": True, "init": "random"}) and not uses_preview_probe({"preview_probe": False, "init": "checkpoint"})


def test_preview_probe_makes_the_classifier_the_closed_form_probe():
    task = Task("labels", "multilabel", "labels", ("a", "b", "c"))
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(2.0, 3.0, (80, 48)).astype(np.float32))
    target = torch.from_numpy((features[:, :3].numpy() + rng.normal(size=(80, 3)) > 2).astype(np.float32))
    net = Net1D(SMALL)
    set_preview_probe(task, net, features, target)
    z = (features - features.mean(0)) / features.std(0).mean()
    weight, bias = fit_probe(task, z.numpy(), target.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(net.dense(features).numpy(), z.numpy() @ weight.T + bias, atol=1e-4)
        # it trains in the probe's own (standardised) units, so AdamW's ~lr steps move it as they move a fresh Linear
        np.testing.assert_allclose(net.dense.dense.weight.numpy(), weight, rtol=1e-6)
        fold_classifier(net)  # then the network's own Linear again, with the same outputs
        assert isinstance(net.dense, torch.nn.Linear) and set(net.state_dict()) == set(Net1D(SMALL).state_dict())
        np.testing.assert_allclose(net.dense(features).numpy(), z.numpy() @ weight.T + bias, atol=1e-4)


def test_post_trained_net_is_saved_in_the_released_container(tmp_path):
    net = post_training_net(1, 2, stochastic_depth=0.2, width=0.0625, depth=0.25)
    path = write_checkpoint(tmp_path / "1_lead_ECGFounder.pth", net, epoch=3, step=30, enecg={"sampling_rate": 100.0})
    state = torch.load(path, weights_only=True)["state_dict"]
    assert set(state) == set(net.state_dict()) | set(net.unused_keys())  # what the reference's strict load needs
    loaded = load_net1d(path)
    assert loaded.shape == net.shape and all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    backbone = build_backbone("ecgfounder-1lead", path)
    assert backbone.config.spec.sampling_rate == 100.0 and backbone.config.spec.samples == 1000
    assert backbone.config.embedding_dim == net.shape.filters[-1]
    with pytest.raises(Exception, match="takes 1 leads"):
        post_training_net(12, 2, 0.1, checkpoint=path)


def changed(edit) -> dict:
    params = copy.deepcopy(PARAMS)
    edit(params)
    return params


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(post_trained=["ecgfounder"]), r"params\.yaml: split\.gate_fraction: expected a gate hold-out for the post-trained experts \['ecgfounder'\]"),
    (lambda p: (p.update(post_trained=["ecgfounder"]), p["split"].update(method="fold", train_folds=[1, 2], test_folds=[3])),
     r"params\.yaml: split\.gate_folds: expected a gate hold-out"),
    (lambda p: p["split"].update(method="fold", train_folds=[1, 2], test_folds=[3], gate_folds=[2]), r"split\.gate_folds: expected folds that are neither"),
    (lambda p: p["split"].update(gate_fraction=1.0), r"split\.gate_fraction: expected a number in \[0, 0\.9\]"),
    (lambda p: p.update(post_trained=["minirocket"]), r"post_trained: expected names drawn from \['ecgfounder', 'ecgfounder-1lead'\]"),
    (lambda p: p["post_train"].update(init="pretrained"), r"post_train\.init: expected one of \['random', 'checkpoint'\]"),
    (lambda p: p["post_train"].update(init="checkpoint"), r"post_train\.sizes\.cpu: expected the published size with init: checkpoint"),
    (lambda p: p["post_train"].update(size="huge"), r"post_train\.size: expected a name among post_train\.sizes"),
    (lambda p: p["post_train"]["sizes"]["cpu"].update(sampling_rate=50), r"post_train\.sizes\.cpu\.sampling_rate: expected a number in \(80, 500\]"),
    (lambda p: p["post_train"].update(stochastic_depth=1.5), r"post_train\.stochastic_depth: expected a number in \[0, 0\.9\]"),
    (lambda p: p["post_train"].update(preview_probe="yes"), r"post_train\.preview_probe: expected true, false or auto"),
])
def test_params_refuse_a_leaky_or_wrong_post_training_setup(edit, message):
    with pytest.raises(ManifestError, match=message):
        validate(changed(edit))


def test_the_gate_hold_out_is_a_third_set_of_subjects():
    subjects = np.repeat(np.arange(40), 3).astype(str)
    usable = np.ones(len(subjects), bool)
    default = make_split(subjects, usable, {"method": "subject", "test_fraction": 0.25, "k": 3, "seed": 0})
    held = make_split(subjects, usable, {"method": "subject", "test_fraction": 0.25, "gate_fraction": 0.2, "k": 3, "seed": 0})
    assert len(default.gate) == 0 and np.array_equal(held.test, default.test)  # the test set does not move
    assert set(held.gate) | set(held.train) == set(default.train) and len(set(subjects[held.gate])) == 6
    assert not set(subjects[held.gate]) & (set(subjects[held.train]) | set(subjects[held.test]))
    folds = np.repeat(np.arange(40) % 10 + 1, 3)
    by_fold = make_split(subjects, usable, {"method": "fold", "train_folds": list(range(1, 9)), "test_folds": [10], "gate_folds": [9], "k": 3}, folds)
    assert set(folds[by_fold.gate]) == {9} and set(folds[by_fold.train]) == set(range(1, 9))
    assert POST_TRAINABLE_NAMES == POST_TRAINABLE


def imported_files(start: Path) -> set[str]:
    """Every project module `start` imports, transitively (static imports)."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in (n for n in names if n.startswith(("pipeline", "stages"))):
                for candidate in (ROOT / f"{name.replace('.', '/')}.py", ROOT / name.replace(".", "/") / "__init__.py"):
                    if candidate.exists():
                        todo.append(candidate)
    return {str(path.relative_to(ROOT)) for path in seen}


def test_dvc_stage_depends_on_what_it_runs_and_on_no_head_or_gate_parameter():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stage = stages["post_train"]
    assert stage["matrix"] == {"task": "${tasks}", "model": "${post_trained}"}
    assert stage["params"] == ["post_train", "split"]  # not heads, gate, backbones or the post_trained list
    assert stage["outs"] == ["heads/${item.model}-post/${item.task}"]
    infrastructure = {"pipeline/__init__.py", "pipeline/cluster.py", "pipeline/errors.py", "pipeline/layout.py", "pipeline/manifests.py",
                      "pipeline/progress.py", "pipeline/seeding.py", "pipeline/stores.py"}  # fit_heads lists none of these
    code = {dep for dep in stage["deps"] if dep.endswith(".py")}
    assert code == imported_files(ROOT / "stages/post_train.py") - infrastructure
    assert not [dep for dep in stage["deps"] if dep.startswith(("heads", "gates", "embeddings"))]
    assert "post_trained" in stages["fit_gate"]["params"] and "post_train" not in stages["fit_heads"]["do"]["params"]


def tiny_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(subjects=24, records_per_subject=2)
    params["backbones"] = ["minirocket"]
    params["pretrain"] = {"minirocket": {"max_records": 32, "max_fit_records": 32, "seed": 0}}
    params["tasks"] = [TASK]
    params["split"]["gate_fraction"] = 0.25
    params["post_trained"] = ["ecgfounder", "ecgfounder-1lead"]
    params["post_train"]["sizes"]["tiny"] = {"width": 0.0625, "depth": 0.25, "sampling_rate": 100}
    params["post_train"].update(size="tiny", epochs=2, batch_size=16, patience=2, preview_probe=True)  # every label-dependent step
    params["heads"].update(epochs=5)
    params["gate"].update(epochs=5)
    params["evaluate"]["bootstrap"] = 20
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny corpus with MiniRocket heads and both post-trained Net1D experts of one task, and its gate."""
    folder = tmp_path_factory.mktemp("post-train")
    (folder / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        enecg("demo-data")
        enecg("prepare")
        enecg("pretrain", "--model", "minirocket")
        enecg("extract", "--model", "minirocket")
        assert "ecgfounder-1lead-post" in enecg("post-train", "--task", TASK)  # every model in `post_trained`
        params = load_params()
        fit_heads.run(params, TASK, "minirocket")
        fit_gate.run(params, TASK)
        yield folder


def saved_predictions(folder: Path, expert: str) -> dict:
    return dict(np.load(folder / head_dir(TASK, expert) / "predictions.npz"))


def test_post_trained_experts_join_the_ensemble_and_extract_reads_them(project, monkeypatch):
    monkeypatch.chdir(project)
    data = load_task_data(load_params(), TASK)
    enecg("evaluate", "--task", TASK)
    report = json.loads((project / "metrics" / f"{TASK}.json").read_text())
    experts = ["minirocket", "ecgfounder-post", "ecgfounder-1lead-post"]
    assert {f"{kind}:{e}" for e in experts for kind in ("expert", "probe")} | {"mean", "moe"} <= set(report["models"])
    assert json.loads((project / "gates" / TASK / "gate.json").read_text())["experts"] == experts
    assert set(report["gate_weights"]["mean"]) == set(experts)
    meta = json.loads((project / head_dir(TASK, "ecgfounder-1lead-post") / "meta.json").read_text())
    assert meta["spec"]["leads"] == ["I"] and meta["spec"]["sampling_rate"] == 100 and meta["timings"]["steps"] > 0

    # The saved network is ECGFounder's container: `extract` runs it as the ecgfounder backbone, at its own rate
    # and size, and its native logits are the expert's own test predictions.
    checkpoint = project / head_dir(TASK, "ecgfounder-post") / "12_lead_ECGFounder.pth"
    extract_embeddings("ecgfounder", Path("corpus.zarr"), Path("post.zarr"), checkpoint=checkpoint, chunk_records=16)
    store = open_complete(Path("post.zarr"), "extract")
    assert store["embedding"].shape[1] == json.loads((checkpoint.parent / "meta.json").read_text())["shape"]["filters"][-1]
    logits = store["logits"][:][data.test]
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), saved_predictions(project, "ecgfounder-post")["test_folds"][0], atol=1e-5)


def test_no_row_the_gate_trains_on_was_seen_by_any_expert(project, tmp_path, monkeypatch):
    """The gate trains on the hold-out's rows, which no expert trained on: every expert's recorded training rows
    miss them, and replacing their labels and signals (embeddings, for the heads) changes no expert's model,
    so not one test prediction of any expert moves by a single bit."""
    monkeypatch.chdir(project)
    data = load_task_data(load_params(), TASK)
    gate_rows = np.load(project / "gates" / TASK / "rows.npy")
    assert len(gate_rows) and np.array_equal(gate_rows, data.gate)
    experts = ["minirocket", "ecgfounder-post", "ecgfounder-1lead-post"]
    before = {expert: saved_predictions(project, expert) for expert in experts}
    for saved in before.values():
        assert np.array_equal(saved["gate_rows"], gate_rows) and not np.isin(saved["train_rows"], gate_rows).any()

    copy_dir = tmp_path / "poisoned"
    copy_dir.mkdir()
    for name in ("params.yaml", "data", "corpus.zarr", "embeddings", "checkpoints"):
        (shutil.copytree if (project / name).is_dir() else shutil.copy)(project / name, copy_dir / name)
    rng = np.random.default_rng(0)
    corpus = zarr.open_group(str(copy_dir / "corpus.zarr"), mode="r+")
    corpus["signals"].oindex[gate_rows] = rng.normal(size=(len(gate_rows), *corpus["signals"].shape[1:])).astype(np.float32)
    embeddings = zarr.open_group(str(copy_dir / "embeddings" / "minirocket.zarr"), mode="r+")
    embeddings["embedding"].oindex[gate_rows] = rng.random((len(gate_rows), embeddings["embedding"].shape[1])).astype(np.float32)
    monkeypatch.chdir(copy_dir)
    params = load_params()

    def flipped_labels(*args, **kwargs):
        data = load_task_data(*args, **kwargs)
        data.target = data.target.copy()
        data.target[data.gate] = 1.0 - data.target[data.gate]
        return data

    for stage in (post_train, fit_heads):
        monkeypatch.setattr(stage, "load_task_data", flipped_labels)
    fit_heads.run(params, TASK, "minirocket")
    post_train.run(params, TASK, "ecgfounder")
    for expert in ("minirocket", "ecgfounder-post"):
        after = saved_predictions(copy_dir, expert)
        for key in ("train_rows", "test_rows", "test_folds", "probe_test_folds"):
            assert np.array_equal(after[key], before[expert][key]), (expert, key)
        assert not np.array_equal(after["oof"], before[expert]["oof"]), expert  # the gate rows' inputs did change

    def one_training_label_flipped(*args, **kwargs):  # the check has teeth: a training row's label does count
        data = flipped_labels(*args, **kwargs)
        data.target[data.train[0]] = 1.0 - data.target[data.train[0]]
        return data

    monkeypatch.setattr(post_train, "load_task_data", one_training_label_flipped)
    post_train.run(params, TASK, "ecgfounder")
    assert not np.array_equal(saved_predictions(copy_dir, "ecgfounder-post")["test_folds"], before["ecgfounder-post"]["test_folds"])
