"""params.yaml is validated before any heavy work: every bad field is an error naming the file, the key and
what was expected."""

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ManifestError
from pipeline.manifests import write_tasks
from pipeline.params import load_params, validate
from pipeline.stage_one.demo import TASKS as DEMO_TASKS

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {**yaml.safe_load((ROOT / "params.yaml").read_text()), "task_definitions": DEMO_TASKS}  # as load_params reads them


def changed(edit) -> dict:
    params = copy.deepcopy(PARAMS)
    edit(params)
    return params


def test_the_project_params_are_valid_and_read_their_tasks_from_data_tasks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestError, match=r"data/demo/manifest\.tasks\.yaml does not exist; it is named by data\.tasks"):
        load_params(ROOT / "params.yaml")
    assert "task_definitions" not in load_params(ROOT / "params.yaml", need_tasks=False)  # demo-data writes them
    write_tasks(DEMO_TASKS, Path("data/demo/manifest.jsonl"))
    loaded = load_params(ROOT / "params.yaml")
    assert loaded["tasks"] == PARAMS["tasks"] and loaded["task_definitions"] == DEMO_TASKS


def test_task_definitions_in_params_yaml_are_refused(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    with pytest.raises(ManifestError, match=r"params\.yaml: task_definitions: define tasks in the file that data\.tasks names"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["split"].update(method="fold", train_folds="1..8", test_folds=[10]), r"split\.train_folds: expected a non-empty list of integers.*got '1\.\.8'"),
    (lambda p: p["split"].update(method="fold", train_folds=[1, 2], test_folds=[2]), r"split\.test_folds: expected folds that are not also train_folds"),
    (lambda p: p["split"].update(method="kfold"), r"split\.method: expected one of \['subject', 'fold', 'cv'\], got 'kfold'"),
    (lambda p: p["split"].update(test_fraction=1.5), r"split\.test_fraction: expected a number in \(0, 1\]"),
    (lambda p: p["split"].update(k=1), r"split\.k: expected an integer in \[2, inf\]"),
    (lambda p: p["split"].update(method="cv", test_fold=3), r"split\.test_fold: expected an integer in \[0, 2\]"),
    (lambda p: p.update(tasks=["rr_interval", "potassium"]), r"tasks: expected names drawn from .*got \['potassium'\]"),
    (lambda p: p.update(tasks="rr_interval"), r"tasks: expected a non-empty list of names"),
    (lambda p: p.update(backbones=["minirocket", "ecg-fm"]), r"backbones: expected names drawn from .*got \['ecg-fm'\]"),
    (lambda p: p["task_definitions"]["rate_class"].update(classes=["brady", "brady", "tachy"]), r"task_definitions\.rate_class\.classes: expected names without duplicates"),
    (lambda p: p["task_definitions"]["rate_class"].update(classes=["brady"]), r"task_definitions\.rate_class\.classes must list at least 2"),
    (lambda p: p["task_definitions"]["irregular"].update(type="binomial"), r"task_definitions\.irregular\.type is 'binomial'"),
    (lambda p: p["heads"].update(lr="fast"), r"heads\.lr: expected a number, got 'fast'"),
    (lambda p: p["cluster"].update(scheduler="slurm"), r"cluster\.scheduler: expected none, local, or a scheduler address such as tcp://host:8786, got 'slurm'"),
    (lambda p: p["cluster"].update(workers=0), r"cluster\.workers: expected an integer in \[1, inf\], got 0"),
    (lambda p: p["heads"]["lora"].update(target_layers=[1]), r"heads\.lora\.target_layers: expected indices of the FFN's Linear layers"),
    (lambda p: p["gate"].update(leads=["II", "V7"]), r"gate\.leads: expected names drawn from .*\['V7'\]"),
    (lambda p: p["gate"].update(ablations=["both"]), r"gate\.ablations: expected names drawn from"),
    (lambda p: p["gate"].update(sampling_rate=1000), r"gate\.sampling_rate: expected a number in \(0, 500\]"),
    (lambda p: p["evaluate"].update(bootstrap=-1), r"evaluate\.bootstrap: expected an integer in \[0, inf\]"),
    (lambda p: p["extract"].update(device="tpu"), r"extract\.device: expected auto, cpu, cuda or cuda:N"),
    (lambda p: p["prepare"].update(min_seconds=20), r"prepare\.min_seconds: expected a number in \(0, 10\]"),
    (lambda p: p["heads"].pop("epochs"), r"heads\.epochs: missing"),
    (lambda p: p.pop("gate"), r"missing sections \['gate'\]"),
])
def test_bad_params_name_the_key_and_what_was_expected(edit, message):
    with pytest.raises(ManifestError, match=r"^params\.yaml: " + message):
        validate(changed(edit))


def test_a_100_hz_corpus_keeps_the_published_post_training_size_listed():
    """Only the size that runs must fit in the corpus's rate (the PTB-XL benchmark: 100 Hz, size cpu)."""
    at_100_hz = lambda p: p["prepare"].update(sampling_rate=100)  # noqa: E731
    validate(changed(at_100_hz))
    with pytest.raises(ManifestError, match=r"post_train\.sizes\.published\.sampling_rate: expected a number in \(80, 100\]"):
        validate(changed(lambda p: (at_100_hz(p), p["post_train"].update(size="published"))))


def test_fold_split_with_integer_lists_is_accepted():
    validate(changed(lambda p: p["split"].update(method="fold", train_folds=[1, 2, 3, 4, 5, 6, 7, 8], test_folds=[10])))


def test_a_bad_params_file_fails_the_cli_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    bad = changed(lambda p: p["split"].update(method="fold", train_folds="1..8", test_folds=[10]))
    monkeypatch.chdir(tmp_path)
    write_tasks(bad.pop("task_definitions"), Path(bad["data"]["manifest"]))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(app, ["prepare"])
    assert result.exit_code == 1 and "split.train_folds" in result.output
    assert not (tmp_path / "corpus.zarr").exists() and not (tmp_path / "corpus.zarr.partial").exists()
