"""What a public checkpoint has already seen: corpus ids, composite expansion, the seen-corpus warning, and
`enecg backbones` at 80 columns with every checkpoint file name and source URL uncut."""

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pipeline import cli
from pipeline.stage_one.backbones import (
    COMPOSITE_CORPORA,
    COMPOSITE_CORPORA_SOURCE,
    CORPORA,
    corpora_seen,
    corpus_id,
    expand_corpora,
    list_backbones,
    made_by_pretrain,
    seen_corpus_warning,
)
from pipeline.progress import console

PHYSIONET_2021 = {"cpsc-2018", "cpsc-2018-extra", "incart", "ptb", "ptb-xl", "georgia", "chapman-shaoxing", "ningbo"}
URL = re.compile(r"https?://[^\s,()]+")


def test_composites_expand_to_their_parts():
    assert set(COMPOSITE_CORPORA["physionet-2021"]) == PHYSIONET_2021
    assert expand_corpora(["physionet-2021"]) == PHYSIONET_2021 | {"physionet-2021"}
    assert set(COMPOSITE_CORPORA["physionet-2020"]) < PHYSIONET_2021  # 2021 adds chapman-shaoxing and ningbo
    assert "ett" in expand_corpora(["time-series-pile"])  # recursive: pile -> informer-long-horizon -> ett
    assert expand_corpora(["ptb-xl"]) == {"ptb-xl"}
    for composite, parts in COMPOSITE_CORPORA.items():
        assert composite in CORPORA and set(parts) <= set(CORPORA) and COMPOSITE_CORPORA_SOURCE[composite]


def test_corpus_ids_are_canonical():
    assert corpus_id(" PTB_XL ") == "ptb-xl" and corpus_id("MIMIC IV ECG") == "mimic-iv-ecg"
    assert all(corpus_id(name) == name for name in CORPORA)


def test_every_config_records_its_training_data():
    for config in list_backbones():
        assert set(config.trained_on) <= set(CORPORA), config.name
        assert set(config.trained_on_labels) <= set(config.trained_on), config.name
        assert config.trained_on_source, f"{config.name}: say where the authors state it, or 'not stated'"
        if not config.trained_on and not config.pretrainable:
            assert "not stated" in config.trained_on_source, config.name
        if config.pretrainable:
            assert "enecg pretrain" in config.trained_on_source, config.name


def test_ecgfm_has_seen_ptb_xl():
    seen = corpora_seen("ecgfm")
    assert {"mimic-iv-ecg", "physionet-2021", "ptb-xl"} <= seen
    assert "ptb-xl" in corpora_seen("ecgfm-finetuned")
    assert corpora_seen("hubert-ecg-base") == set()  # not stated


def test_warning_for_a_seen_corpus_only():
    warning = seen_corpus_warning("ecgfm", "ptb-xl")
    assert warning is not None and "\n" not in warning
    assert "ecgfm" in warning and "physionet-2021, which includes ptb-xl" in warning
    assert "test records may have been its training records" in warning
    assert "with its labels" in seen_corpus_warning("ecgfm-finetuned", "PTB-XL")
    assert seen_corpus_warning("ecgfm", "mimic-iv-ecg") is not None
    assert seen_corpus_warning("ecgfm", "physionet-2020") is not None  # shares every 2020 training set
    assert seen_corpus_warning("ecgfm", "code-15") is None
    assert seen_corpus_warning("ecgfm", "heedb") is None
    assert seen_corpus_warning("ecgfm", None) is None
    assert seen_corpus_warning("ecgfounder", "ptb-xl") is None
    assert seen_corpus_warning("moment-base", "ptb-xl") is None


def test_a_corpus_made_checkpoint_saw_only_training_records(tmp_path):
    checkpoint = tmp_path / "dlinear" / "checkpoint.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"")
    assert "enecg pretrain" in seen_corpus_warning("dlinear", "mimic-iv-ecg", checkpoint)  # maybe EnECG's file
    (checkpoint.parent / "pretrain.json").write_text("{}")
    assert made_by_pretrain("dlinear", checkpoint)
    assert seen_corpus_warning("dlinear", "mimic-iv-ecg", checkpoint) is None
    assert not made_by_pretrain("ecgfm", tmp_path / "ecgfm" / "x.pt")


def test_help_lists_the_registered_backbones_and_the_shipped_tasks():
    configs = list_backbones()
    assert cli.BACKBONE_NAMES == tuple(config.name for config in configs)
    assert cli.PRETRAINABLE_NAMES == tuple(config.name for config in configs if config.pretrainable)
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    assert cli.DEFAULT_TASKS == tuple(params["tasks"])
    for name in cli.BACKBONE_NAMES:
        assert name in cli.MODEL_HELP
    for task in cli.DEFAULT_TASKS:
        assert task in cli.TASK_HELP


def _backbones_at_80_columns(monkeypatch, *args) -> str:
    # the shared console fixes its width at import when COLUMNS is set then, so pin it to 80 here as well
    monkeypatch.setattr(console, "_width", 80)
    result = CliRunner(env={"COLUMNS": "80"}).invoke(cli.app, ["backbones", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_backbones_at_80_columns_cuts_nothing(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative paths as the README's, and no real checkpoint to hash
    output = _backbones_at_80_columns(monkeypatch, "--checkpoints", "checkpoints")
    lines = output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "…" not in output and "..." not in output
    for config in list_backbones():
        assert any(line.strip() == config.name for line in lines), config.name
        path = f"checkpoints/{config.name}/{config.checkpoint_file}"
        assert path in output, f"{path} is cut or missing"
        urls = URL.findall(config.source)
        assert urls or config.pretrainable, config.name
        for url in urls:
            assert url in output, f"{url} is cut or missing"
        for corpus in config.trained_on:
            assert corpus in output


def test_backbones_corpus_option_warns_per_backbone(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    output = _backbones_at_80_columns(monkeypatch, "--corpus", "ptb-xl")
    assert output.count("WARNING") == sum(seen_corpus_warning(c.name, "ptb-xl") is not None for c in list_backbones())
    assert output.count("WARNING") >= 2  # ecgfm and ecgfm-finetuned
    assert "checkpoints may have been trained on records of ptb-xl" in output
    assert "not a known corpus id" in _backbones_at_80_columns(monkeypatch, "--corpus", "ptbxl")
    assert "WARNING" not in _backbones_at_80_columns(monkeypatch, "--corpus", "code-15")
