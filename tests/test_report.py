"""`enecg report`: one self-contained HTML page with every task's metrics, intervals, paired differences, gate
weights and pictures, prepare's QC summary and the backbones' checkpoints, from a run's artifacts."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from pipeline import cli
from pipeline.html_report import gather, interval, number, render, verdict
from pipeline.layout import figures_dir, metrics_path
from pipeline.stage_two.metrics import evaluate_candidates
from pipeline.stores import write_json
from pipeline.tasks import Task
from tests.browser import (
    chromium,
    coloured,
    coloured_fraction,
    console_errors,
    full_page,
    network_requests,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
SHA = "5d2f088dbc138a549ecc6d79552d3a852dbcc83c00648a1df7544be4a02c58ba"
TASKS = {"rr_interval": Task("rr_interval", "regression", "rr_interval"), "irregular": Task("irregular", "binary", "irregular"),
         "rate_class": Task("rate_class", "multiclass", "rate_class", ("brady", "normal", "tachy"))}


def metrics_report(task: Task, seed: int) -> dict:
    """metrics/TASK.json as evaluate writes it, its statistics computed by the real bootstrap on synthetic predictions."""
    rng = np.random.default_rng(seed)
    n = 60
    subjects = np.repeat(np.arange(15), 4).astype(str)
    if task.type == "regression":
        truth = rng.normal(800, 100, n)
        experts = {e: (truth + rng.normal(0, s, n))[:, None] for e, s in (("minirocket", 30), ("dlinear", 90))}
    else:
        truth = (rng.random(n) < 0.4).astype(float)
        experts = {e: (1 / (1 + np.exp(-(s * (2 * truth - 1) + rng.normal(0, 1, n)))))[:, None] for e, s in (("minirocket", 2.0), ("dlinear", 0.4))}
    candidates = {f"expert:{e}": p for e, p in experts.items()} | {"probe:minirocket": experts["minirocket"]}
    candidates["mean"] = (experts["minirocket"] + experts["dlinear"]) / 2
    candidates["moe"] = 0.8 * experts["minirocket"] + 0.2 * experts["dlinear"]
    stats = evaluate_candidates(task, truth, candidates, subjects, resamples=40, confidence=0.95, seed=0,
                                pairs={"moe-best": ("moe", "expert:minirocket"), "moe-mean": ("moe", "mean")})
    groups = ("low third", "middle third", "high third") if task.type == "regression" else ("0", "1")
    return {"task": task.name, "type": task.type, "n_train": 180, "n_test": n, "best_expert": "minirocket", **stats,
            "gate_weights": {"mean": {"minirocket": 0.8, "dlinear": 0.2}, "by_class": {g: {"minirocket": 0.8, "dlinear": 0.2} for g in sorted(groups)}},
            "warnings": ["checkpoint X was trained on this corpus"] if task.type == "binary" else []}


def png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (60, 40), colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A run's artifacts: two evaluated tasks of three, corpus.zarr, one backbone extracted of two."""
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params |= {"tasks": list(TASKS), "backbones": ["minirocket", "dlinear"]}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    Path(params["data"]["tasks"]).parent.mkdir(parents=True)
    Path(params["data"]["tasks"]).write_text(yaml.safe_dump(
        {name: {"type": t.type, "label": t.label, **({"classes": list(t.classes)} if t.classes else {})} for name, t in TASKS.items()}))
    for seed, name in enumerate(("rr_interval", "irregular")):
        write_json(metrics_path(name), metrics_report(TASKS[name], seed))
        figures_dir(name).mkdir(parents=True)
        for stem, colour in (("roc", (200, 30, 30)), ("training", (30, 30, 200)), ("gate", (30, 160, 30))):
            (figures_dir(name) / f"{stem}.png").write_bytes(png(colour))
    corpus = zarr.open_group("corpus.zarr", mode="w")
    corpus.attrs.update({"complete": True, "sampling_rate": 500, "samples": 5000, "units": "mV",
                         "leads": ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"],
                         "summary": {"records": 250, "kept": 240, "excluded": {"flat lead": 7, "shorter than 10 s": 3}},
                         "provenance": {"manifest": "data/demo/manifest.jsonl", "manifest_sha256": "ab" * 32}})
    store = zarr.open_group("embeddings/minirocket.zarr", mode="w")
    store.attrs.update({"complete": True, "backbone": "minirocket", "checkpoint": "checkpoints/minirocket/checkpoint.pth",
                        "checkpoint_sha256": SHA, "device": "cpu", "embedding_dim": 9996, "outputs": ["embedding"],
                        "spec": {"leads": ["I"] * 12, "sampling_rate": 100.0, "samples": 1000, "normalisation": "none"},
                        "provenance": {"enecg_version": "0.1.0", "corpus": {"manifest": "data/demo/manifest.jsonl", "manifest_sha256": "cd" * 32}}})
    return params


def cell(stat: dict) -> str:
    """A statistic as the page shows it: the value, then its interval."""
    return f"{number(stat['value'])} {interval(stat)}"


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_report_shows_every_section_of_the_run(run):
    html = render(gather(run))
    plain = text(html)
    for name in ("rr_interval", "irregular"):
        report = metrics_report(TASKS[name], ("rr_interval", "irregular").index(name))
        for candidate, row in report["models"].items():
            assert candidate in plain
            for stat in row.values():
                assert cell(stat) in plain  # the value and its interval, as in metrics/TASK.json
        for pair, row in report["paired"].items():
            assert pair in plain and all(cell(stat) in plain for stat in row.values())
        assert f"{report['bootstrap']['resamples_used']} of {report['bootstrap']['resamples']} bootstrap resamples of subjects" in plain
    assert "Not evaluated yet: run enecg evaluate --task rate_class" in plain
    assert plain.index("true class low third") < plain.index("true class middle third") < plain.index("true class high third")
    assert "warning: checkpoint X was trained on this corpus" in plain
    assert "excluded: flat lead 7" in plain and "excluded: shorter than 10 s 3" in plain and "kept (passed QC) 240" in plain
    assert f'title="{SHA}"' in html and SHA[:16] in plain and "9996" in plain
    assert "embeddings/dlinear.zarr not found: run enecg extract --model dlinear" in plain
    moe_row = re.search(r'<tr class="moe"><td>moe</td>', html)
    assert moe_row, "the MoE row is marked"
    candidates = re.findall(r"<tr(?: class=\"moe\")?><td>([^<]+)</td>", html.split("Paired differences")[0])
    assert candidates[:4] == ["expert:dlinear", "expert:minirocket", "mean", "moe"] and candidates[-1] == "probe:minirocket"


def test_paired_differences_say_which_way_an_interval_excluding_0_points():
    assert verdict({"value": -60.2, "low": -89.2, "high": -32.9}, "mae") == "MoE better"  # errors: lower is better
    assert verdict({"value": 0.28, "low": 0.22, "high": 0.44}, "r2") == "MoE better"
    assert verdict({"value": -0.05, "low": -0.08, "high": -0.01}, "auroc") == "MoE worse"
    assert verdict({"value": 0.001, "low": -0.0003, "high": 0.002}, "auroc") == ""
    assert verdict({"value": float("nan"), "low": float("nan"), "high": float("nan")}, "auroc") == ""


def test_report_is_one_self_contained_file(run):
    html = render(gather(run))
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 6 and all(src.startswith("data:image/png;base64,") for src in images)
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in images}
    assert embedded == {(figures_dir(n) / f"{s}.png").read_bytes() for n in ("rr_interval", "irregular") for s in ("roc", "training", "gate")}
    assert not re.search(r"<(script|link|iframe)\b", html), "the page loads nothing else"
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)


def test_enecg_report_writes_the_page(run, tmp_path):
    result = CliRunner().invoke(cli.app, ["report", "--out", "out/report.html"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "EnECG report" in Path("out/report.html").read_text(encoding="utf-8")
    assert not list(Path("out").glob("*.partial*")), "written whole, then renamed"


def test_report_renders_in_a_browser(run, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render(gather(run)), encoding="utf-8")
    with chromium(width=1280, height=900) as driver:
        driver.get(page.as_uri())
        assert wait_for(lambda: driver.execute_script(
            "return document.images.length == 6 && Array.from(document.images).every(i => i.complete && i.naturalWidth == 60)"))
        assert console_errors(driver) == [] and network_requests(driver) == []
        assert coloured_fraction(coloured(full_page(driver))) > 0.001
