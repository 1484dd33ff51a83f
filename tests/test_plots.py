"""The evaluation's pictures: the tables behind them (every task type, multilabel included, on synthetic
predictions), the matplotlib PNGs, the DVCLive training logs, DVC's plots of them as dvc.yaml declares them,
and `dvc plots show`'s page rendered offline in a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from pipeline.layout import figures_dir, plot_table_path
from pipeline.offline_plots import PLACEHOLDERS, TEMPLATE, version_line, versions
from pipeline.stage_two import figures
from pipeline.stage_two.plot_data import (
    BY_CLASS,
    MACRO,
    OVER_RECORDS,
    TOP_LABELS,
    areas,
    calibration_rows,
    confusion_rows,
    curve_groups,
    gate_rows,
    plot_tables,
    pr_rows,
    predicted_vs_actual_rows,
    roc_rows,
    training_histories,
    training_rows,
)
from pipeline.stage_two.plots import KINDS, write_plots
from pipeline.stage_two.training_log import GATES_LOG, HEADS_LOG, log_gates, log_heads
from pipeline.tasks import Task
from tests.browser import (
    chromium,
    coloured,
    coloured_fraction,
    console_errors,
    element_boxes,
    full_page,
    network_requests,
    skip_without_browser,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
EXPERTS = ["alpha", "beta"]
TASKS = {
    "rr": Task("rr", "regression", "rr"),
    "afib": Task("afib", "binary", "afib"),
    "rate": Task("rate", "multiclass", "rate", ("brady", "normal", "tachy")),
    "scp": Task("scp", "multilabel", "scp", ("NORM", "MI", "STTC", "CD", "HYP", "AFIB")),
}
CLASSIFICATION_KINDS = {"roc", "precision_recall", "calibration", "confusion", "gate"}
TABLES = {"regression": {"calibration", "predicted_vs_actual", "gate"}, "binary": CLASSIFICATION_KINDS,
          "multiclass": CLASSIFICATION_KINDS, "multilabel": CLASSIFICATION_KINDS}  # the plot_data kinds of each type
FIGURES = {kind: tables | {"training"} for kind, tables in TABLES.items()}  # the PNGs


def synthetic(task: Task, n: int = 80, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, list[str]]:
    """(truth, candidates, MoE weights [n, 2], record ids): informative experts of unequal skill, as evaluate has them."""
    rng = np.random.default_rng(seed)
    ids = [f"r{i:03d}" for i in range(n)]
    if task.type == "regression":
        truth = rng.normal(800, 150, n)
        outputs = {e: truth + rng.normal(0, s, n) for e, s in zip(EXPERTS, (40, 120))}
    elif task.type == "binary":
        truth = (rng.random(n) < 0.4).astype(float)
        outputs = {e: 1 / (1 + np.exp(-(s * (2 * truth - 1) + rng.normal(0, 1, n)))) for e, s in zip(EXPERTS, (2.0, 0.5))}
    elif task.type == "multiclass":
        truth = rng.choice(3, n, p=[0.2, 0.6, 0.2])
        outputs = {}
        for e, s in zip(EXPERTS, (2.5, 0.7)):
            logits = rng.normal(0, 1, (n, 3)) + s * np.eye(3)[truth]
            outputs[e] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    else:
        labels = len(task.classes)
        truth = (rng.random((n, labels)) < np.linspace(0.5, 0.05, labels)).astype(float)
        truth[:, -1] = 0.0  # a label without a positive in the test set: no curve can be drawn for it
        outputs = {e: 1 / (1 + np.exp(-(s * (2 * truth - 1) + rng.normal(0, 1, truth.shape)))) for e, s in zip(EXPERTS, (2.0, 0.6))}
    as_k = lambda a: np.asarray(a, float).reshape(n, -1)  # noqa: E731
    candidates = {f"probe:{e}": as_k(outputs[e]) for e in EXPERTS}
    candidates |= {f"expert:{e}": as_k(outputs[e]) for e in EXPERTS}
    weights = rng.dirichlet([4, 1], n)
    candidates["mean"] = np.mean([candidates[f"expert:{e}"] for e in EXPERTS], axis=0)
    candidates["moe"] = weights[:, :1] * candidates["expert:alpha"] + weights[:, 1:] * candidates["expert:beta"]
    return truth, candidates, weights, ids


def histories(folds: int = 2, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    rng = np.random.default_rng(seed)
    out = {}
    for fold in range(folds):
        epochs = int(rng.integers(8, 20))
        train = list(1.0 / np.arange(1, epochs + 1) + rng.random(epochs) * 0.05)
        out[f"fold{fold}"] = {"train": train, "validation": [1.2] + list(np.array(train) + 0.1)}
    return out


# --- the tables ---------------------------------------------------------------------------------------------


def test_groups_are_named_classes_and_labels():
    groups = {name: [g for g, _ in curve_groups(task, synthetic(task)[0])] for name, task in TASKS.items()}
    assert groups["rr"] == []
    assert groups["afib"] == ["afib"]
    assert groups["rate"] == ["brady", "normal", "tachy"]
    truth = synthetic(TASKS["scp"])[0]
    frequent = sorted(range(5), key=lambda k: -truth[:, k].sum())[:TOP_LABELS]  # AFIB (5) has no positive: no curve
    assert groups["scp"] == [MACRO, *(TASKS["scp"].classes[k] for k in frequent)]


def test_roc_curves_are_the_per_class_aurocs():
    task = TASKS["rate"]
    truth, candidates, _, _ = synthetic(task)
    rows = roc_rows(task, truth, candidates)
    assert {r["series"] for r in rows if not r["reference"]} == {"expert:alpha", "expert:beta", "mean", "moe"}  # no probes
    found = areas(rows, "fpr", "tpr")
    for k, name in enumerate(task.classes):
        for candidate in ("expert:alpha", "moe"):
            assert found[(name, candidate)] == pytest.approx(roc_auc_score(truth == k, candidates[candidate][:, k]), abs=1e-3)
            curve = sorted((r for r in rows if r["group"] == name and r["series"] == candidate), key=lambda r: r["point"])
            assert (curve[0]["fpr"], curve[0]["tpr"], curve[-1]["fpr"], curve[-1]["tpr"]) == (0, 0, 1, 1)
    assert found[("brady", "expert:alpha")] > found[("brady", "expert:beta")] + 0.1  # the stronger expert is seen as such


def test_multilabel_macro_roc_is_close_to_the_mean_auroc():
    task = TASKS["scp"]
    truth, candidates, _, _ = synthetic(task)
    found = areas(roc_rows(task, truth, candidates), "fpr", "tpr")
    usable = [k for k in range(6) if 0 < truth[:, k].sum() < len(truth)]
    mean_auc = np.mean([roc_auc_score(truth[:, k], candidates["moe"][:, k]) for k in usable])
    assert found[(MACRO, "moe")] == pytest.approx(mean_auc, abs=0.02)


def test_precision_recall_runs_from_recall_0_to_1_with_the_prevalence_as_reference():
    task = TASKS["afib"]
    truth, candidates, _, _ = synthetic(task)
    rows = pr_rows(task, truth, candidates)
    curve = sorted((r for r in rows if r["series"] == "moe"), key=lambda r: r["point"])
    recall = [r["recall"] for r in curve]
    assert recall[0] == 0 and recall[-1] == 1 and recall == sorted(recall)
    assert curve[-1]["precision"] == pytest.approx(truth.mean(), abs=1e-4)  # everything called positive
    reference = [r for r in rows if r["reference"]]
    assert [r["precision"] for r in reference] == pytest.approx([truth.mean()] * 2, abs=1e-4)


def test_calibration_bins_count_every_record_and_agree_with_scikit_learn():
    from sklearn.calibration import calibration_curve

    task = TASKS["afib"]
    truth, candidates, _, _ = synthetic(task)
    rows = [r for r in calibration_rows(task, truth, candidates) if r["series"] == "moe"]
    assert sum(r["count"] for r in rows) == len(truth)
    observed, predicted = calibration_curve(truth, candidates["moe"][:, 0], n_bins=10, strategy="uniform")
    assert [r["observed"] for r in rows] == pytest.approx(observed, abs=1e-4)
    assert [r["predicted"] for r in rows] == pytest.approx(predicted, abs=1e-4)
    regression = calibration_rows(TASKS["rr"], *synthetic(TASKS["rr"])[:2])
    moe = [r for r in regression if r["series"] == "moe"]
    assert len(moe) == 10 and sum(r["count"] for r in moe) == 80
    assert [r["predicted"] for r in moe] == sorted(r["predicted"] for r in moe)


def test_confusion_rows_name_the_classes():
    rate = TASKS["rate"]
    truth, candidates, _, ids = synthetic(rate)
    rows = confusion_rows(rate, truth, candidates["moe"], ids)
    assert [r["actual"] for r in rows] == [rate.classes[k] for k in truth]
    assert [r["predicted"] for r in rows] == [rate.classes[k] for k in candidates["moe"].argmax(1)]
    truth, candidates, _, ids = synthetic(TASKS["afib"])
    assert {r["actual"] for r in confusion_rows(TASKS["afib"], truth, candidates["moe"], ids)} == {"afib", "not afib"}
    scp = TASKS["scp"]
    truth, candidates, _, ids = synthetic(scp)
    labels = [r["label"] for r in confusion_rows(scp, truth, candidates["moe"], ids)]
    assert list(dict.fromkeys(labels)) == [g for g, _ in curve_groups(scp, truth)][1:] and len(labels) == TOP_LABELS * len(truth)
    truth, candidates, _, ids = synthetic(TASKS["rr"])
    assert confusion_rows(TASKS["rr"], truth, candidates["moe"], ids) == []


def test_gate_rows_summarise_the_weights_by_class_and_over_the_records():
    task = TASKS["scp"]
    truth, _, weights, _ = synthetic(task)
    rows = gate_rows(task, truth, weights, EXPERTS)
    by_class = {(r["class"], r["expert"]): r for r in rows if r["view"] == BY_CLASS}
    assert by_class[("NORM", "alpha")]["weight"] == pytest.approx(weights[truth[:, 0] >= 0.5, 0].mean(), abs=1e-4)
    assert by_class[("NORM", "alpha")]["records"] == truth[:, 0].sum()  # a record counts in each of its labels
    assert len({c for c, _ in by_class}) == TOP_LABELS
    spread = {r["expert"]: r for r in rows if r["view"] == OVER_RECORDS}
    assert spread["beta"]["weight"] == pytest.approx(np.median(weights[:, 1]), abs=1e-4) and spread["beta"]["records"] == len(weights)
    assert spread["beta"]["low"] <= spread["beta"]["q1"] <= spread["beta"]["q3"] <= spread["beta"]["high"]
    thirds = {r["class"] for r in gate_rows(TASKS["rr"], synthetic(TASKS["rr"])[0], weights, EXPERTS) if r["view"] == BY_CLASS}
    assert thirds == {"low third", "middle third", "high third"}


def test_predicted_vs_actual_shows_the_best_experts_the_mean_and_the_moe():
    task = TASKS["rr"]
    truth, candidates, _, ids = synthetic(task)
    candidates["expert:gamma"] = (truth + 400.0)[:, None]  # the worst expert: left out of the picture
    rows = predicted_vs_actual_rows(task, truth, candidates, ids)
    assert list(dict.fromkeys(r["series"] for r in rows)) == ["expert:alpha", "expert:beta", "mean", "moe"]
    assert [r["actual"] for r in rows if r["series"] == "moe"] == pytest.approx(truth, abs=1e-4)


def test_training_rows_start_the_held_out_curve_at_epoch_0():
    rows = training_rows({"fold0": {"train": [3.0, 2.0], "validation": [4.0, 3.5, 2.5]}})
    validation = [(r["epoch"], r["loss"]) for r in rows if r["series"] == "validation"]
    train = [(r["epoch"], r["loss"]) for r in rows if r["series"] == "train"]
    assert validation == [(0, 4.0), (1, 3.5), (2, 2.5)] and train == [(1, 3.0), (2, 2.0)]


def test_training_histories_are_read_from_heads_and_gates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for expert in EXPERTS:
        Path(f"heads/{expert}/t").mkdir(parents=True)
        Path(f"heads/{expert}/t/meta.json").write_text(json.dumps({"histories": list(histories(2).values())}))
    Path("gates/t").mkdir(parents=True)
    Path("gates/t/gate.json").write_text(json.dumps({"variants": {"moe": {"history": {"train": [1.0], "validation": [2.0, 1.5]}}}}))
    found = training_histories("t", [*EXPERTS, "missing"])
    assert list(found) == [*EXPERTS, "gate"] and list(found["alpha"]) == ["fold0", "fold1"] and list(found["gate"]) == ["moe"]


def test_plot_tables_leave_out_the_kinds_a_task_type_has_not():
    for task in TASKS.values():
        truth, candidates, weights, ids = synthetic(task)
        tables = plot_tables(task, truth, candidates, weights, EXPERTS, ids)
        assert set(tables) == set(KINDS)
        assert {kind for kind, rows in tables.items() if rows} == TABLES[task.type], task.type
        for kind, rows in tables.items():  # DVC reads a table whose rows differ in keys as no data
            assert all(row.keys() == rows[0].keys() for row in rows), (task.type, kind)


# --- a project with every task type: PNGs, DVCLive logs, DVC's plots ----------------------------------------


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(cwd / ".dvc" / "tmp" / "site")}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# the project's tasks: one of each type; the multilabel one has three labels with a curve (fewer panels to draw)
PROJECT = {**TASKS, "scp": Task("scp", "multilabel", "scp", ("NORM", "MI", "STTC", "AFIB"))}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The repository's dvc.yaml and .dvc/plots/ over four tasks, one of each type, with their tables, PNGs and
    DVCLive training logs written by the functions evaluate, fit-heads and fit-gate call."""
    root = tmp_path_factory.mktemp("plots_project")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params |= {"tasks": list(PROJECT), "backbones": EXPERTS}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    from dvc.repo import Repo

    with Repo.init(root, no_scm=True) as repo, repo.config.edit() as config:
        config["plots"]["html_template"] = "plots/offline.html"  # as in the repository's .dvc/config
    shutil.copytree(ROOT / ".dvc" / "plots", root / ".dvc" / "plots")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(figures, "DPI", 50)  # the drawing code is what is tested, not the resolution: a quicker raster
        for seed, (name, task) in enumerate(PROJECT.items()):
            truth, candidates, weights, ids = synthetic(task, seed=seed)
            curves = {expert: histories(folds=1 + e, seed=seed + e) for e, expert in enumerate(EXPERTS)}
            curves["gate"] = {"moe": histories(1, seed)["fold0"]}
            write_plots(task, truth, candidates, weights, EXPERTS, ids, curves)
            for expert in EXPERTS:
                log_heads(name, expert, curves[expert])
            log_gates(name, curves["gate"])
    return root


def test_every_task_type_gets_its_pngs(project):
    for name, task in PROJECT.items():
        found = {path.stem: path for path in (project / figures_dir(name)).glob("*.png")}
        assert set(found) == FIGURES[task.type], name
        for path in found.values():
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert coloured_fraction(path.read_bytes()) > 0.005, f"{path} looks blank"


def test_dvclive_logs_the_curves_and_their_summaries(project):
    logged = json.loads((project / HEADS_LOG / "beta" / "metrics.json").read_text())
    assert set(logged) == {"heads"} and set(logged["heads"]) == set(PROJECT), "each task's heads kept beside the others'"
    summary = logged["heads"]["rate"]
    curves = histories(folds=2, seed=2 + 1)  # what the fixture logged for beta on the task rate
    best = [min(h["validation"]) for h in curves.values()]
    assert summary == pytest.approx({"folds": 2, "epochs": np.mean([len(h["train"]) for h in curves.values()]),
                                     "best_validation_loss": np.mean(best), "worst_fold_best_validation_loss": max(best)})  # no "step"
    gates = json.loads((project / GATES_LOG / "metrics.json").read_text())
    assert set(gates) == {"gates"} and set(gates["gates"]) == set(PROJECT), "each task's gate kept beside the others'"
    assert set(gates["gates"]["scp"]["moe"]) == {"epochs", "best_validation_loss"}
    curve = json.loads((project / GATES_LOG / "plots" / "custom" / "scp.json").read_text())
    assert {row["series"] for row in curve} == {"train", "validation"} and curve[0]["group"] == "moe"
    rows = json.loads((project / HEADS_LOG / "beta" / "plots" / "custom" / "rate.json").read_text())
    assert {row["group"] for row in rows} == {"fold0", "fold1"}


def test_dvc_plots_show_draws_every_declared_plot_with_named_classes(project):
    result = dvc("plots", "show", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert "errors" not in shown, shown.get("errors")
    data = shown["data"]
    expected = {str(plot_table_path(kind, name)) for name, task in PROJECT.items() for kind in TABLES[task.type]}
    expected |= {f"dvclive/heads/{e}/plots/custom/{name}.json" for name in PROJECT for e in EXPERTS}
    expected |= {f"dvclive/gates/plots/custom/{name}.json" for name in PROJECT}
    expected |= {str(figures_dir(name) / f"{stem}.png") for name, task in PROJECT.items() for stem in FIGURES[task.type]}
    assert expected <= set(data), sorted(expected - set(data))
    for path, renders in data.items():
        for render in renders:
            if render["type"] == "vega":
                assert render["content"]["data"]["values"], f"{path}: no data"
    values = lambda path: data[path][0]["content"]["data"]["values"]  # noqa: E731
    assert {v["group"] for v in values("plot_data/roc/rate.json")} == {"brady", "normal", "tachy"}
    assert {v["actual"] for v in values("plot_data/confusion/rate.json")} == {"brady", "normal", "tachy"}
    assert {v["group"] for v in values("plot_data/roc/scp.json")} == {MACRO, "NORM", "MI", "STTC"}
    assert data["plot_data/roc/rate.json"][0]["content"]["facet"]["column"]["field"] == "group"  # enecg_curves applied


def test_offline_template_inlines_the_installed_vega_and_no_cdn():
    html = (ROOT / TEMPLATE).read_text(encoding="utf-8")
    pytest.importorskip("vl_convert", reason="vl-convert-python (test extra) rebuilds the template")
    assert version_line(versions()) in html, "rebuild it: python -m pipeline.offline_plots"
    assert "{plot_divs}" in html and "{scripts}" not in html and all(p in html for p in PLACEHOLDERS if p != "{scripts}")
    assert not re.search(r"<script[^>]+src=", html), "the template must load nothing"
    assert "window.vegaEmbed=" in html


def test_the_repository_points_dvc_at_the_offline_template():
    from configparser import ConfigParser

    config = ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert config.get("plots", "html_template", fallback=None) == "plots/offline.html", (
        "run `dvc config plots.html_template plots/offline.html` so that `dvc plots show` renders offline"
    )


def test_dvc_plots_page_renders_offline_in_a_browser(project, tmp_path):
    skip_without_browser()
    out = tmp_path / "page"
    result = dvc("plots", "show", "-o", str(out), cwd=project)  # the template comes from .dvc/config
    assert result.returncode == 0, result.stderr
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in page and "window.vegaEmbed=" in page
    charts = re.findall(r"vegaEmbed\('#([^']+)'", page)
    images = len(re.findall(r"<img src=\"static/", page))
    assert len(charts) >= 20 and images >= 20
    with chromium(width=1500, height=1200) as driver:
        driver.get((out / "index.html").as_uri())
        drawn = wait_for(lambda: driver.execute_script(
            "return document.querySelectorAll('div.vega-embed canvas, div.vega-embed svg.marks').length") >= len(charts), timeout=60)
        assert drawn, "not every vega plot was drawn"
        assert wait_for(lambda: driver.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")), "an image did not load"
        assert console_errors(driver) == []
        assert network_requests(driver) == [], "the page reached for the network"
        mask = coloured(full_page(driver))
        boxes = element_boxes(driver, "div.vega-embed") + element_boxes(driver, "img")
        assert len(boxes) == len(charts) + images
        blank = [name for name, box in boxes if coloured_fraction(mask, box) < 0.002]
        assert blank == [], f"blank plots: {blank}"
