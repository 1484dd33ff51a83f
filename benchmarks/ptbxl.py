"""The PTB-XL benchmark: the whole pipeline on real ECGs, next to the published PTB-XL benchmark figures.

    python benchmarks/ptbxl.py [--work DIR] [--bootstrap N] [--fresh]

Uses shared/data/ptbxl-100hz (PTB-XL at 100 Hz, ecg_id <= 10000 only; see shared/data/README.md):

1. unpacks records100.tar.xz into the work folder (default ~/.cache/enecg/ptbxl-100hz; skipped when already
   unpacked), copies labels.csv beside it and builds the manifest with the project's own builder
   (data_manifests.ptbxl, label-table form, 100 Hz -> filename_lr), timing the build;
2. writes the work folder's params.yaml, derived from the project's: PTB-XL's standard split (strat_fold 1-8
   train, 10 test; fold 9, the benchmark's validation fold, is not used: heads and gate early-stop on
   held-out training subjects instead), the backbones this project makes from the corpus itself
   (minirocket, dlinear, timesnet: the foundation models' weights cannot be downloaded here), the
   benchmark's statement sets plus age and sex, the task definitions from the builder's sidecar;
3. runs the stages through the `enecg` CLI in the work folder (nice -n 10), timing each one: prepare,
   pretrain and extract for each backbone, then fit-ensemble (heads, gate, evaluate) for each task;
4. writes benchmarks/ptbxl.md: per task, each expert, their plain mean and the MoE (macro AUROC with its 95%
   bootstrap interval; MAE for age) beside Strodthoff et al. (2021), the gate's mean weights, per-label
   AUROC for superclass, the wall time of every stage and prepare's QC summary.

Every stage runs with OMP_NUM_THREADS=1 (--threads): on this 2-core machine shared with other work, torch's
default 2 intra-op threads made the small head/gate/DLinear matmuls ~15x slower (threads waiting for a
core), e.g. fit-heads superclass/dlinear for 3 epochs 144 s with 2 threads, 9.7 s with 1.

With --post-train it first runs the ECGFounder post-training study's ablation on superclass (`enecg post-train`,
Net1D at params.yaml's `cpu` size from random initialisation, fold 9 as the gate hold-out): plain fine-tuning,
+ stochastic depth, + preview linear probing, both, and both on lead I only; each run in its own folder
WORK/post_train/RUN/ (its params.yaml, a link to the corpus), reported with macro AUROC and AUPRC, paired
differences against plain fine-tuning and 12-lead vs lead I, and wall times. One run's time at that size is
measured and projected in benchmarks/post_train_time.md (12 leads: 16 min on this shared 2-core machine, 10.5 min on
an idle core; 15 epochs at most, early stopping can end it sooner), so the five runs take about 1-2 hours here.

A rerun skips the stages whose time is already recorded in WORK/times.json and whose output exists (so a
killed run resumes); --fresh deletes the stages' outputs and reruns everything.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_manifests.ptbxl import build_ptbxl_manifest, tasks_path, write_manifest  # noqa: E402
from tests.shared_dir import DATA  # noqa: E402  ($ENECG_SHARED, else ../shared)

SHARED = DATA / "ptbxl-100hz"
# TimesNet (`--backbones minirocket,dlinear,timesnet`) is left out by default: on this CPU its pretraining and
# extraction cost ~32 minutes of the benchmark's ~70 and its experts reached 0.58-0.69 macro AUROC (the
# previous run); a short self-supervised run (300 records x 12 leads x 2 shifts, one epoch) when asked for.
BACKBONES = ["minirocket", "dlinear"]
TIMESNET_PRETRAIN = {"max_records": 300, "epochs": 1, "max_shift": 2, "seed": 0}
GATE_ABLATIONS = ["constant", "outputs", "leads"]  # the MoE itself sees leads + outputs
PATIENCE, MAX_EPOCHS = 10, 100
# In the order they run, so that a run stopped early has the headline label sets (`--report-only` then writes the
# report of the tasks that finished).
TASKS = ["superclass", "rhythm", "scp_all", "age", "subclass", "sex", "form", "diagnostic"]
# Strodthoff et al. 2021 (PTB-XL benchmark), macro AUC on fold 10, xresnet1d101. Their "all" is scp_all,
# "diag" diagnostic, "subdiag" subclass, "superdiag" superclass.
PUBLISHED = {"scp_all": 0.925, "diagnostic": 0.937, "subclass": 0.929, "superclass": 0.928, "form": 0.896, "rhythm": 0.957}
NICE = ["nice", "-n", "10"]
OUTPUTS = ["corpus.zarr", "checkpoints", "embeddings", "heads", "gates", "metrics", "times.json", "post_train"]
# --post-train: the ablation of the ECGFounder post-training study, run -> (model, stochastic depth, preview probe)
POST_TRAIN_TASK = "superclass"
POST_TRAIN_RUNS = {
    "plain": ("ecgfounder", 0.0, False),
    "stochastic depth": ("ecgfounder", 0.1, False),
    "preview probe": ("ecgfounder", 0.0, True),
    "both": ("ecgfounder", 0.1, True),
    "both, lead I": ("ecgfounder-1lead", 0.1, True),
}


def unpack(work: Path) -> float:
    """records100/ in the work folder, skipped when a finished unpack left its marker (which holds the
    seconds the unpack took); returns those seconds."""
    marker = work / "records100" / ".unpacked"
    if marker.exists():
        return float(marker.read_text() or 0)
    start = time.perf_counter()
    with tarfile.open(SHARED / "records100.tar.xz", "r:xz") as archive:
        archive.extractall(work, filter="data")
    seconds = time.perf_counter() - start
    marker.write_text(f"{seconds:.1f}")
    return seconds


def build_manifest(work: Path) -> tuple[Path, dict, float]:
    """The manifest (+ .tasks.yaml sidecar) from labels.csv with the project's builder, and its wall time."""
    labels = work / "labels.csv"
    shutil.copyfile(SHARED / "labels.csv", labels)
    start = time.perf_counter()
    rows, tasks = build_ptbxl_manifest(labels, sampling_rate=100)
    manifest = write_manifest(rows, tasks, work / "ptbxl.jsonl")
    seconds = time.perf_counter() - start
    print(f"manifest: {len(rows)} records, tasks {list(tasks)}, built in {seconds:.2f} s")
    return manifest, tasks, seconds


def write_params(work: Path, manifest: Path, tasks: dict, bootstrap: int) -> list[str]:
    """work/params.yaml from the project's params.yaml; returns the benchmark's tasks."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    names = [t for t in TASKS if t in tasks]  # the label table has no `diagnostic`
    params["data"] = {"manifest": str(manifest), "root": str(work), "tasks": str(tasks_path(manifest)), "corpus": "ptb-xl"}
    # the records are 100 Hz; every backbone resamples to its own rate, so 500 Hz would only bloat the store
    params["prepare"].update(sampling_rate=100, seconds=10, min_seconds=10)
    params["split"] = {"method": "fold", "train_folds": list(range(1, 9)), "test_folds": [10], "k": 3, "seed": 0}
    params["backbones"] = list(BACKBONES)
    pretrain = {**params["pretrain"], "timesnet": TIMESNET_PRETRAIN}
    params["pretrain"] = {name: pretrain[name] for name in BACKBONES}
    params["gate"]["ablations"] = list(GATE_ABLATIONS)
    # On this CPU an epoch of a MiniRocket head (9,996 inputs) costs ~3 s: stop after 10 epochs without a better
    # held-out loss (the project default is 20), so that the 7 tasks fit in well under an hour.
    for section in ("heads", "gate"):
        params[section].update(patience=PATIENCE, epochs=MAX_EPOCHS)
    params["tasks"] = names
    params["evaluate"]["bootstrap"] = bootstrap
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return names


def run_stage(work: Path, times: dict, key: str, args: list[str], output: str, cwd: Path | None = None) -> None:
    """`enecg ARGS` in the work folder (or `cwd`), niced, with its output streamed to the console and logs/KEY.log."""
    if key in times and (work / output).exists():
        print(f"== {key}: done before ({times[key]:.0f} s), skipped")
        return
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    (work / "logs").mkdir(exist_ok=True)
    print(f"== {key}: enecg {' '.join(args)}", flush=True)
    start = time.perf_counter()
    with open(work / "logs" / f"{key}.log", "w") as log:
        process = subprocess.Popen([*NICE, "enecg", *args], cwd=cwd or work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            if "━" not in line or any(corner in line for corner in "┏┡"):  # progress bars go to the log only
                print(line, end="", flush=True)
    if process.wait() != 0:
        raise SystemExit(f"{key} failed (exit {process.returncode}); see {work / 'logs' / (key + '.log')}")
    times[key] = time.perf_counter() - start
    (work / "times.json").write_text(json.dumps(times, indent=1))
    print(f"== {key}: {times[key]:.0f} s", flush=True)


def post_train_folder(work: Path, run: str) -> Path:
    return work / "post_train" / run.replace(", ", "-").replace(" ", "-")


def post_train_output(work: Path, run: str) -> Path:
    model = POST_TRAIN_RUNS[run][0]
    return post_train_folder(work, run) / "heads" / POST_TRAIN_TASK / f"{model}-post"


def run_post_train_ablation(work: Path, times: dict) -> None:
    """Each run of POST_TRAIN_RUNS in WORK/post_train/RUN/: the benchmark's params with fold 9 as the gate hold-out
    and the run's switches, the corpus linked, then `enecg post-train` there (timed, resumable like any stage)."""
    run_stage(work, times, "prepare", ["prepare"], "corpus.zarr")
    base = yaml.safe_load((work / "params.yaml").read_text())
    for run, (model, stochastic_depth, preview_probe) in POST_TRAIN_RUNS.items():
        folder = post_train_folder(work, run)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "corpus.zarr").is_symlink():
            (folder / "corpus.zarr").symlink_to(work / "corpus.zarr", target_is_directory=True)
        params = copy.deepcopy(base)
        params["split"]["gate_folds"] = [9]
        params.update(tasks=[POST_TRAIN_TASK], post_trained=[model])
        params["post_train"].update(init="random", size="cpu", stochastic_depth=stochastic_depth, preview_probe=preview_probe)
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        output = str(post_train_output(work, run).relative_to(work))
        run_stage(work, times, f"post-train {run}", ["post-train", "--task", POST_TRAIN_TASK, "--model", model], output, cwd=folder)


def run_pipeline(work: Path, tasks: list[str], times: dict, stage_one_only: bool = False) -> None:
    run_stage(work, times, "prepare", ["prepare"], "corpus.zarr")
    for name in BACKBONES:
        run_stage(work, times, f"pretrain {name}", ["pretrain", "--model", name], f"checkpoints/{name}")
    for name in BACKBONES:
        run_stage(work, times, f"extract {name}", ["extract", "--model", name], f"embeddings/{name}.zarr")
    if stage_one_only:
        return
    for task in tasks:
        for name in BACKBONES:
            run_stage(work, times, f"fit-heads {task} {name}", ["fit-heads", "--task", task, "--model", name], f"heads/{task}/{name}")
        run_stage(work, times, f"fit-gate {task}", ["fit-gate", "--task", task], f"gates/{task}")
        run_stage(work, times, f"evaluate {task}", ["evaluate", "--task", task], f"metrics/{task}.json")


# ---------------------------------------------------------------------------------------------------------
# Report


def _metric(report: dict) -> tuple[str, int, str]:
    """The headline metric of a task: (key, digits, label)."""
    return ("mae", 2, "MAE (years)") if report["type"] == "regression" else ("auroc", 3, "macro AUROC")


def _cell(metric: dict, digits: int, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{metric['value']:{sign}.{digits}f} ({metric['low']:{sign}.{digits}f} to {metric['high']:{sign}.{digits}f})"


def results_table(reports: dict[str, dict]) -> list[str]:
    """Per task: each backbone's probe and expert, the plain mean, the MoE, and the paired differences."""
    columns = [c for name in BACKBONES for c in (f"probe:{name}", f"expert:{name}")] + ["mean", "moe"]
    header = ["task", "labels used", "metric", *columns, "MoE - best expert", "MoE - mean", "Strodthoff et al. 2021"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, report in reports.items():
        metric, digits, label = _metric(report)
        cells = [_cell(report["models"][c][metric], digits) for c in columns]
        paired = [_cell(report["paired"][pair][metric], digits, signed=True) for pair in ("moe-best", "moe-mean")]
        published = f"{PUBLISHED[task]:.3f}" if task in PUBLISHED else "-"
        name = "scp_all (all)" if task == "scp_all" else task
        lines.append(f"| {name} | {report['bootstrap']['labels_used']} | {label} | {' | '.join(cells)} | {' | '.join(paired)} | {published} |")
    return lines


def ablation_table(reports: dict[str, dict]) -> list[str]:
    """The gate's inputs ablated: learned constant weights, outputs only, leads only, leads + outputs (the MoE)."""
    columns = ["mean", *[f"moe:{a}" for a in GATE_ABLATIONS], "moe"]
    names = {"mean": "plain mean", "moe:constant": "constant weights", "moe:outputs": "outputs only", "moe:leads": "leads only", "moe": "leads + outputs (MoE)"}
    header = ["task", "metric", "best expert", *[names[c] for c in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, report in reports.items():
        metric, digits, label = _metric(report)
        best = f"expert:{report['best_expert']}"
        cells = [_cell(report["models"][c][metric], digits) for c in [best, *columns]]
        lines.append(f"| {task} | {label} | {' | '.join(cells)} |")
    return lines


def bootstrap_table(reports: dict[str, dict], times: dict) -> list[str]:
    header = ["task", "test records", "test subjects", "labels used", "resamples used", "evaluate wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, report in reports.items():
        boot = report["bootstrap"]
        lines.append(f"| {task} | {report['n_test']} | {boot['subjects']} | {boot['labels_used']} | {boot['resamples_used']} / {boot['resamples']} | {times.get(f'evaluate {task}', float('nan')):.1f} |")
    return lines


def gate_weights_table(reports: dict[str, dict]) -> list[str]:
    """The MoE gate's mean weight per expert over the test records, per task, and its spread over records."""
    header = ["task", *BACKBONES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, report in reports.items():
        weights = report["gate_weights"]["mean"]
        lines.append(f"| {task} | {' | '.join(f'{weights[name]:.2f}' for name in BACKBONES)} |")
    return lines


def weights_by_class_table(report: dict) -> list[str]:
    header = ["label (test positives)", *BACKBONES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, weights in report["gate_weights"]["by_class"].items():
        lines.append(f"| {label} | {' | '.join(f'{weights[name]:.2f}' for name in BACKBONES)} |")
    return lines


def head_vs_probe(reports: dict[str, dict]) -> str:
    """What the FFN + LoRA adds over the probe it starts from, per backbone (point estimates)."""
    parts = []
    for task, report in reports.items():
        metric, digits, _ = _metric(report)
        gaps = [f"{name} {report['models'][f'expert:{name}'][metric]['value'] - report['models'][f'probe:{name}'][metric]['value']:+.{digits}f}" for name in BACKBONES]
        parts.append(f"{task} ({', '.join(gaps)})")
    return "Head minus its probe (point estimates; negative MAE is better): " + "; ".join(parts) + "."


def reading(reports: dict[str, dict]) -> str:
    """The headline, from the paired differences' intervals: where the MoE is above, level with or below."""
    verdicts = {"moe-best": [], "moe-mean": []}
    for task, report in reports.items():
        metric, _, _ = _metric(report)
        better = -1 if metric == "mae" else 1
        for pair in verdicts:
            low, high = sorted(better * report["paired"][pair][metric][bound] for bound in ("low", "high"))
            verdicts[pair].append((task, "above" if low > 0 else "below" if high < 0 else "level"))

    def say(pair: str, what: str) -> str:
        groups = {v: [t for t, verdict in verdicts[pair] if verdict == v] for v in ("above", "level", "below")}
        return (f"Against {what}, the MoE is better with the whole 95% interval of the paired difference above 0 on "
                f"{len(groups['above'])} of {len(reports)} tasks ({', '.join(groups['above']) or 'none'}), "
                f"indistinguishable on {len(groups['level'])} ({', '.join(groups['level']) or 'none'}) and worse on "
                f"{len(groups['below'])} ({', '.join(groups['below']) or 'none'}).")

    return say("moe-best", "the best single expert (chosen on the test rows: the conservative choice)") + " " + say("moe-mean", "the plain mean")


def test_predictions(work: Path, task: str):
    """(TaskData, candidate name -> test predictions) of a task, as `enecg evaluate` computed them."""
    from pipeline.stage_two.dataset import load_task_data
    from pipeline.stage_two.evaluation import test_candidates
    from pipeline.params import load_params

    here = Path.cwd()
    os.chdir(work)  # the pipeline's artifact paths are relative to the work folder
    try:
        data = load_task_data(load_params(), task)
        return data, test_candidates(data)[0]
    finally:
        os.chdir(here)


def per_label_table(work: Path, task: str, report: dict) -> list[str]:
    """Per-label test AUROC of each probe and expert, the mean and the MoE, with each label's positives."""
    from pipeline.stage_two.metrics import per_label_auroc

    data, candidates = test_predictions(work, task)
    truth = data.target[data.test]
    shown = [c for name in BACKBONES for c in (f"probe:{name}", f"expert:{name}")] + ["mean", "moe"]
    columns = {name: per_label_auroc(data.task, truth, candidates[name]) for name in shown}
    train_pos, test_pos = data.target[data.train].sum(0), truth.sum(0)
    header = ["label", "train positives", "test positives", *shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k, label in enumerate(data.task.classes):
        values = [f"{columns[c][label]:.3f}" for c in shown]
        lines.append(f"| {label} | {int(train_pos[k])} | {int(test_pos[k])} | {' | '.join(values)} |")
    return lines


def moe_gap_table(work: Path, reports: dict[str, dict], shown: int = 2) -> list[str]:
    """Per label task, the labels that move MoE - best expert most: each label's AUROC difference over the number of
    labels in the macro average is its share of the difference (point estimates)."""
    from pipeline.stage_two.metrics import per_label_auroc

    lines = ["| task | label | test positives | best expert | MoE | share of MoE - best expert |", "|---|---|---|---|---|---|"]
    for task, report in reports.items():
        if report["type"] not in ("multiclass", "multilabel"):
            continue
        data, candidates = test_predictions(work, task)
        truth = data.target[data.test]
        best = per_label_auroc(data.task, truth, candidates[f"expert:{report['best_expert']}"])
        moe = per_label_auroc(data.task, truth, candidates["moe"])
        labels = [label for label in best if np.isfinite(best[label])]
        positives = dict(zip(data.task.classes, truth.sum(0) if truth.ndim == 2 else np.bincount(truth, minlength=len(data.task.classes))))
        share = {label: (moe[label] - best[label]) / len(labels) for label in labels}
        for label in sorted(labels, key=lambda label: -abs(share[label]))[:shown]:
            lines.append(f"| {task} | {label} | {int(positives[label])} | {best[label]:.3f} | {moe[label]:.3f} | {share[label]:+.4f} |")
    return lines


def post_train_report(work: Path, times: dict, bootstrap: int) -> dict | None:
    """The finished ablation runs' experts on the test fold: macro AUROC/AUPRC with subject-bootstrap intervals,
    before and after fine-tuning, paired differences against plain fine-tuning and 12-lead vs lead I; None if none ran."""
    from pipeline.params import load_params
    from pipeline.stage_two.dataset import load_task_data
    from pipeline.stage_two.metrics import evaluate_candidates

    done = [run for run in POST_TRAIN_RUNS if (post_train_output(work, run) / "predictions.npz").exists()]
    if not done:
        return None
    here = Path.cwd()
    os.chdir(post_train_folder(work, done[0]))  # the runs share the split: any one's folder gives the test rows
    try:
        data = load_task_data(load_params(), POST_TRAIN_TASK)
    finally:
        os.chdir(here)
    candidates, runs = {}, {}
    for run in done:
        saved = np.load(post_train_output(work, run) / "predictions.npz")
        meta = json.loads((post_train_output(work, run) / "meta.json").read_text())
        candidates[run], candidates[f"{run}: before fine-tuning"] = saved["test_folds"][0], saved["probe_test_folds"][0]
        runs[run] = {"model": POST_TRAIN_RUNS[run][0], "stochastic_depth": POST_TRAIN_RUNS[run][1], "preview_probe": POST_TRAIN_RUNS[run][2],
                     "epochs": len(meta["histories"][0]["train"]), "step_s": meta["timings"]["step_s"], "wall_s": times.get(f"post-train {run}"),
                     "shape": meta["shape"], "rate": meta["spec"]["sampling_rate"]}
    pairs = {f"{run} - plain": (run, "plain") for run in done if run != "plain" and "plain" in done and runs[run]["model"] == "ecgfounder"}
    if {"both", "both, lead I"} <= set(done):
        pairs["12 leads - lead I"] = ("both", "both, lead I")
    report = evaluate_candidates(data.task, data.target[data.test], candidates, data.subjects[data.test], bootstrap, 0.95, 0, pairs)
    return {**report, "runs": runs, "n_train": len(data.train), "n_gate": len(data.gate), "n_test": len(data.test)}


def post_train_section(report: dict) -> list[str]:
    runs = report["runs"]
    header = ["run", "leads", "stochastic depth", "preview probe", "epochs", "macro AUROC", "macro AUPRC",
              "AUROC before fine-tuning", "step (s)", "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, info in runs.items():
        models = report["models"]
        wall = f"{info['wall_s']:.0f}" if info["wall_s"] else "-"
        lines.append(f"| {run} | {'I' if info['model'].endswith('1lead') else '12'} | {info['stochastic_depth']:g} | "
                     f"{'yes' if info['preview_probe'] else 'no'} | {info['epochs']} | {_cell(models[run]['auroc'], 3)} | "
                     f"{_cell(models[run]['auprc'], 3)} | {_cell(models[f'{run}: before fine-tuning']['auroc'], 3)} | "
                     f"{info['step_s']:.3f} | {wall} |")
    paired = ["| paired difference | macro AUROC | macro AUPRC |", "|---|---|---|"]
    paired += [f"| {pair} | {_cell(d['auroc'], 3, signed=True)} | {_cell(d['auprc'], 3, signed=True)} |" for pair, d in report["paired"].items()]
    shape = next(iter(runs.values()))["shape"]
    return [
        f"## Post-training ablation ({POST_TRAIN_TASK}, `--post-train`)",
        "",
        f"`enecg post-train`: Net1D at params.yaml's `cpu` size (filters {shape['filters']}, blocks {shape['blocks']}, "
        f"{next(iter(runs.values()))['rate']:g} Hz), from random initialisation, trained on folds 1-8 ({report['n_train']} "
        f"records; its early-stopping subjects among them), fold 9 ({report['n_gate']}) held out for the gate, tested on "
        f"fold 10 ({report['n_test']}), 95% subject-bootstrap intervals. `before fine-tuning`: the network as it started "
        "(after the preview probe, or with its random classifier).",
        "",
        *lines,
        "",
        *paired,
    ]


def write_json_summary(reports: dict[str, dict], post_train: dict | None = None) -> Path:
    """benchmarks/ptbxl.json: per task, every candidate's metrics, the paired differences and the bootstrap block
    (and the post-training ablation's, when it ran)."""
    summary = {"tasks": {
        task: {"models": report["models"], "paired": report["paired"], "best_expert": report["best_expert"],
               "labels_used": report["bootstrap"]["labels_used"], "resamples_used": report["bootstrap"]["resamples_used"],
               "bootstrap": report["bootstrap"], "gate_weights": report["gate_weights"]}
        for task, report in reports.items()
    }}
    if post_train:
        summary["post_train"] = post_train
    out = REPO / "benchmarks" / "ptbxl.json"
    out.write_text(json.dumps(summary, indent=1, sort_keys=True, default=float) + "\n")
    return out


def qc_summary(work: Path) -> list[str]:
    """prepare's summary (corpus.zarr attrs) and the reason of every excluded record."""
    from pipeline.stores import open_corpus
    from pipeline.stores import strings

    corpus = open_corpus(work / "corpus.zarr")
    summary = corpus.attrs["summary"]
    ids, ok, reasons = strings(corpus["record_id"]), corpus["qc_ok"][:], strings(corpus["qc_reason"])
    lines = [f"QC (`enecg prepare`): {summary['kept']} of {summary['records']} records kept; excluded by reason: "
             f"{summary['excluded'] or 'none'}."]
    lines += [f"- ecg_id {i}: {r}" for i, r, keep in zip(ids, reasons, ok) if not keep]
    return lines


def pretraining(work: Path) -> str:
    """How each backbone was made from the corpus, from checkpoints/NAME/pretrain.json."""
    made = {name: json.loads((work / "checkpoints" / name / "pretrain.json").read_text()) for name in BACKBONES}
    rocket = made.pop("minirocket")
    lines = [f"MiniRocket's {rocket['summary']['num_features']:,} kernels' channel subsets and biases (quantiles of "
             f"convolution outputs) fitted on {rocket['records']} seeded-random corpus records"]
    for name, run in made.items():
        forecast = run["summary"]
        lines.append(f"{name} pretrained by self-supervised next-sample forecasting on {run['records']:,} corpus "
                     f"records ({forecast['windows']:,} windows of {forecast['series']:,} lead series, "
                     f"{forecast['epochs']} epoch(s); held-out MSE {forecast['initial_loss']:.3f} -> "
                     f"{forecast['final_loss']:.3f}, repeating the last sample gives {forecast['persistence_loss']:.3f})")
    return "; ".join(lines)


def write_report(work: Path, tasks: list[str], times: dict, manifest_s: float, unpack_s: float, bootstrap: int,
                 threads: int) -> Path:
    done = [task for task in tasks if (work / "metrics" / f"{task}.json").exists()]
    reports = {task: json.loads((work / "metrics" / f"{task}.json").read_text()) for task in done}
    missing = [task for task in tasks if task not in done]
    stage_rows = [f"| {key} | {seconds:.0f} |" for key, seconds in times.items()]
    total = sum(times.values())
    text = [
        "# PTB-XL benchmark (100 Hz, ecg_id <= 10000)",
        "",
        "Command: `python benchmarks/ptbxl.py` (from the project root, with `.venv` active; work folder "
        f"`~/.cache/enecg/ptbxl-100hz`, `--work DIR` to change it). Machine-readable: `benchmarks/ptbxl.json`. "
        f"Backbones: {', '.join(BACKBONES)}. Evaluation: {bootstrap} subject-level bootstrap resamples.",
        "",
        "## Results on fold 10 (test)",
        "",
        *([f"Not run in this session (out of time; `python benchmarks/ptbxl.py` resumes and adds them): {', '.join(missing)}.", ""] if missing else []),
        "Macro AUROC over a fixed label set (the labels with at least one positive and one negative in the test "
        "fold; a resample in which one of them has no positive is dropped for every candidate), or MAE in years "
        "for age, with 95% percentile intervals from resampling test subjects. `probe:B` = the closed-form "
        "linear probe on backbone B's embedding that each head starts from; `expert:B` = probe + LoRA FFN "
        "correction (mean of the 3 fold heads); plain mean = the experts mixed with equal weights (the gate's "
        "start); MoE = the gate on lead II and the experts' outputs, a weighted sum of the experts' logits (values "
        "for age). MoE - best expert and MoE - mean are paired differences from the same "
        "resamples (the best expert is chosen on the test rows, which flatters it).",
        "",
        *results_table(reports),
        "",
        reading(reports),
        "",
        head_vs_probe(reports),
        "",
        "Published: Strodthoff et al., *Deep learning for ECG analysis: benchmarks and insights from PTB-XL* "
        "(IEEE JBHI 2021), macro AUC on fold 10 of the full PTB-XL (100 Hz), xresnet1d101, trained on folds 1-8 "
        "with fold 9 for model selection: all 0.925, diag 0.937, subdiag 0.929, superdiag 0.928, form 0.896, "
        "rhythm 0.957. Their `all` is our `scp_all`, `subdiag` our `subclass`, `superdiag` our `superclass`. "
        "`diag` (every diagnostic statement) has no column in shared/data's label table, so the builder does "
        "not make that task here. Age and sex have no figure in that paper.",
        "",
        "## Gate ablations",
        "",
        "The same experts, mixed by gates that see less: learned constant weights (no input), the experts' "
        "outputs only, lead II only, and both (the MoE).",
        "",
        *ablation_table(reports),
        "",
        "## Bootstrap",
        "",
        *bootstrap_table(reports, times),
        "",
        "## Mean gate weight of each expert on the test records",
        "",
        *gate_weights_table(reports),
        "",
        "Superclass, by label (mean weight among the test records with that label):",
        "",
        *weights_by_class_table(reports["superclass"]),
        "",
        "## Where MoE - best expert comes from",
        "",
        "The two labels of each label set whose AUROC differs most between the MoE and the best expert, and their "
        "share of the macro difference (the label's difference over the number of labels averaged). A label with "
        "one test positive moves a 66-label macro AUROC by up to 0.015 on its own.",
        "",
        *moe_gap_table(work, reports),
        "",
        "## Per-label test AUROC, superclass",
        "",
        *per_label_table(work, "superclass", reports["superclass"]),
        "",
        "## What this is, and is not, comparable with",
        "",
        "- **Data**: shared/data holds PTB-XL's records with ecg_id <= 10000 only (9,974 labelled of the full "
        "21,837), so the training set (folds 1-8) is about half the full benchmark's and the test fold too. "
        "Labels count at any likelihood, as in the benchmark code; a record with no statement of a set is left "
        "out of that task (null in the manifest), as the benchmark does.",
        "- **Split**: strat_fold 1-8 train, 10 test, 3 subject-wise folds of the training set for the "
        "out-of-fold predictions the gate learns from. Fold 9, the benchmark's validation fold, is not used: "
        "heads and gate early-stop on subjects held out of their own training rows instead.",
        f"- **Backbones**: {', '.join(f'`{b}`' for b in BACKBONES)}, made from this corpus's training folds by "
        f"`enecg pretrain`, without labels: {pretraining(work)}. No test record was seen in pretraining. "
        "TimesNet (`--backbones minirocket,dlinear,timesnet`) is left out by default: on this CPU it costs about "
        "32 of the run's minutes, and its experts reached 0.58-0.69 macro AUROC in the previous run. The "
        "foundation models (ECG-FM, ECGFounder, HuBERT-ECG, MOMENT, TEMPO) need their published weights, which "
        "cannot be downloaded on this machine; with random weights their features would say nothing. The "
        "published model is a supervised deep network trained end to end on twice the data; these figures "
        "measure a frozen-feature ensemble, not a reproduction of it.",
        "- **Signals**: the 100 Hz records go into corpus.zarr at 100 Hz x 10 s (`prepare.sampling_rate: 100`); "
        "each backbone resamples to its own rate (MiniRocket 100 Hz, DLinear 50 Hz, the gate's lead II 50 Hz).",
        "",
        f"## Wall time of each stage (this 2-core machine, `nice -n 10`, OMP_NUM_THREADS={threads})",
        "",
        f"Manifest build (`build_ptbxl_manifest` on labels.csv + `write_manifest`, in-process): {manifest_s:.2f} s. "
        + (f"Unpacking records100.tar.xz: {unpack_s:.0f} s." if unpack_s else "records100.tar.xz was unpacked before (time not recorded)."),
        "",
        "| stage | seconds |",
        "|---|---|",
        *stage_rows,
        f"| **total** | **{total:.0f}** |",
        "",
        f"Load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}.",
    ]
    post_train = post_train_report(work, times, bootstrap)
    if post_train:
        text += ["", *post_train_section(post_train)]
    text += ["", "## Quality control", "", *qc_summary(work)]
    out = REPO / "benchmarks" / "ptbxl.md"
    out.write_text("\n".join(text) + "\n")
    write_json_summary(reports, post_train)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "enecg" / "ptbxl-100hz")
    parser.add_argument("--bootstrap", type=int, default=1000, help="evaluation bootstrap resamples")
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated backbones made from the corpus")
    parser.add_argument("--stage-one-only", action="store_true", help="stop after extraction (no report)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; write the report of the tasks that finished")
    parser.add_argument("--fresh", action="store_true", help="delete the stages' outputs and rerun every stage")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every stage (see above)")
    parser.add_argument("--post-train", action="store_true", help="first run the post-training ablation (see above)")
    args = parser.parse_args()
    BACKBONES[:] = args.backbones.split(",")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # inherited by the stages
    work = args.work.expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for name in OUTPUTS:
            path = work / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    unpack_s = unpack(work)
    manifest, tasks, manifest_s = build_manifest(work)
    names = write_params(work, manifest, tasks, args.bootstrap)
    times_path = work / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    if not args.report_only:
        if args.post_train:
            run_post_train_ablation(work, times)
        run_pipeline(work, names, times, args.stage_one_only)
    if args.stage_one_only:
        return
    out = write_report(work, names, times, manifest_s, unpack_s, args.bootstrap, args.threads)
    print(out.read_text())


if __name__ == "__main__":
    main()
