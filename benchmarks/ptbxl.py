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

The ECGFounder post-training study (a post-trained Net1D as a third expert) is benchmarks/ptbxl_post_train.py.

A rerun skips the stages whose time is already recorded in WORK/times.json and whose output exists (so a
killed run resumes); --fresh deletes the stages' outputs and reruns everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from contextlib import chdir
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_manifests.ptbxl import build_ptbxl_manifest, tasks_path, write_manifest  # noqa: E402
from pipeline.layout import head_dir  # noqa: E402
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
TIMES_LOCK = threading.Lock()
OUTPUTS = ["corpus.zarr", "checkpoints", "embeddings", "heads", "gates", "metrics", "times.json"]


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
    with TIMES_LOCK:  # stages may run in threads (benchmarks/ptbxl_post_train.py --jobs)
        times[key] = time.perf_counter() - start
        # merged with the file: ptbxl.py and ptbxl_post_train.py may run at once on the same work folder
        on_disk = json.loads((work / "times.json").read_text()) if (work / "times.json").exists() else {}
        times.update({name: seconds for name, seconds in on_disk.items() if name not in times})
        (work / "times.json").write_text(json.dumps(times, indent=1))
    print(f"== {key}: {times[key]:.0f} s", flush=True)


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
            run_stage(work, times, f"fit-heads {task} {name}", ["fit-heads", "--task", task, "--model", name], str(head_dir(task, name)))
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


def experts(report: dict) -> list[str]:
    """The experts of a task's evaluate report, in the gate's order."""
    return list(report["gate_weights"]["mean"])


def results_table(reports: dict[str, dict]) -> list[str]:
    """Per task: each expert's probe and the expert, the plain mean, the MoE, and the paired differences."""
    columns = [c for name in experts(next(iter(reports.values()))) for c in (f"probe:{name}", f"expert:{name}")] + ["mean", "moe"]
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
    names = experts(next(iter(reports.values())))
    header = ["task", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, report in reports.items():
        weights = report["gate_weights"]["mean"]
        lines.append(f"| {task} | {' | '.join(f'{weights[name]:.2f}' for name in names)} |")
    return lines


def weights_by_class_table(report: dict) -> list[str]:
    header = ["label (test positives)", *experts(report)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, weights in report["gate_weights"]["by_class"].items():
        lines.append(f"| {label} | {' | '.join(f'{weights[name]:.2f}' for name in experts(report))} |")
    return lines


def head_vs_probe(reports: dict[str, dict]) -> str:
    """What the FFN + LoRA adds over the probe it starts from, per backbone (point estimates)."""
    parts = []
    for task, report in reports.items():
        metric, digits, _ = _metric(report)
        gaps = [f"{name} {report['models'][f'expert:{name}'][metric]['value'] - report['models'][f'probe:{name}'][metric]['value']:+.{digits}f}" for name in experts(report)]
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

    with chdir(work):  # the pipeline's artifact paths are relative to the work folder
        data = load_task_data(load_params(), task)
        return data, test_candidates(data)[0]


def per_label_table(work: Path, task: str, report: dict) -> list[str]:
    """Per-label test AUROC of each probe and expert, the mean and the MoE, with each label's positives."""
    from pipeline.stage_two.metrics import per_label_auroc

    data, candidates = test_predictions(work, task)
    truth = data.target[data.test]
    shown = [c for name in experts(report) for c in (f"probe:{name}", f"expert:{name}")] + ["mean", "moe"]
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


def write_json_summary(reports: dict[str, dict], out: Path = REPO / "benchmarks" / "ptbxl.json", **extra) -> Path:
    """`out` (benchmarks/ptbxl.json): per task, every candidate's metrics, the paired differences, the bootstrap
    block and the gate weights, and any `extra` sections."""
    summary = {"tasks": {
        task: {"models": report["models"], "paired": report["paired"], "best_expert": report["best_expert"],
               "labels_used": report["bootstrap"]["labels_used"], "resamples_used": report["bootstrap"]["resamples_used"],
               "bootstrap": report["bootstrap"], "gate_weights": report["gate_weights"]}
        for task, report in reports.items()
    }}
    summary.update(extra)
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
    own = {key: seconds for key, seconds in times.items() if not key.startswith(("post-train", "ensemble"))}  # not ptbxl_post_train.py's
    stage_rows = [f"| {key} | {seconds:.0f} |" for key, seconds in own.items()]
    total = sum(own.values())
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
    text += ["", "## Quality control", "", *qc_summary(work)]
    out = REPO / "benchmarks" / "ptbxl.md"
    out.write_text("\n".join(text) + "\n")
    write_json_summary(reports)
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
        run_pipeline(work, names, times, args.stage_one_only)
    if args.stage_one_only:
        return
    out = write_report(work, names, times, manifest_s, unpack_s, args.bootstrap, args.threads)
    print(out.read_text())


if __name__ == "__main__":
    main()
