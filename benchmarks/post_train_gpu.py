"""Post-training at the published Net1D size on a GPU, on every PTB-XL label set (12 leads and lead I).

    python benchmarks/post_train_gpu.py [--work DIR] [--init random|checkpoint] [--bootstrap N] [--tasks a,b]

Uses the same shared PTB-XL as benchmarks/ptbxl.py (100 Hz, ecg_id <= 10000; its unpacking and manifest): the
records are resampled to 500 Hz by `enecg prepare` (`prepare.sampling_rate: 500`; they were recorded at 500 Hz and
low-passed to 100 Hz by PTB-XL, so nothing above 50 Hz is there), which is the rate the released ECGFounder weights
saw. Split: strat_fold 1-8 train, 9 the gate hold-out, 10 test. For every task (the benchmark's statement sets,
age and sex) and both `ecgfounder` and `ecgfounder-1lead`, `enecg post-train` at params.yaml's `published` size with
the GPU settings below, from random initialisation (`--init checkpoint`: the released .pth files in
WORK/checkpoints/<model>/, which must be there), timed; then benchmarks/post_train_gpu.md: macro AUROC and AUPRC
(MAE for age) with 95% subject-bootstrap intervals on fold 10, before and after fine-tuning, epochs, the measured
step time and the wall time of each run. A rerun skips the runs already timed in WORK/times.json.

GPU settings (a choice, not the paper's: it does not state one recipe for every label set): batch 256, 30
epochs with 2 of warm-up, AdamW lr 1e-3 from random initialisation and 1e-4 from the checkpoint, weight decay
0.01, stochastic depth 0.1, preview probe, patience 5, bf16 autocast (`device: cuda`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import yaml

import ptbxl  # benchmarks/ptbxl.py, beside this script: the shared data's unpacking, manifest and stage runner
from pipeline.layout import head_dir  # (ptbxl put the project on sys.path)

REPO = ptbxl.REPO
MODELS = ["ecgfounder", "ecgfounder-1lead"]
GPU_SETTINGS = {"size": "published", "device": "cuda", "batch_size": 256, "epochs": 30, "warmup_epochs": 2,
                "weight_decay": 0.01, "stochastic_depth": 0.1, "preview_probe": True, "patience": 5}
LEARNING_RATE = {"random": 1e-3, "checkpoint": 1e-4}


def write_params(work: Path, manifest: Path, tasks: dict, bootstrap: int, init: str, only: list[str] | None) -> list[str]:
    """work/params.yaml: the PTB-XL benchmark's, at 500 Hz, fold 9 as the gate hold-out, the GPU recipe."""
    names = ptbxl.write_params(work, manifest, tasks, bootstrap)
    names = [name for name in names if not only or name in only]
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["prepare"]["sampling_rate"] = 500
    params["split"]["gate_folds"] = [9]
    params.update(tasks=names, post_trained=list(MODELS))
    params["post_train"].update(GPU_SETTINGS, init=init, lr=LEARNING_RATE[init])
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return names


def results(work: Path, tasks: list[str], times: dict, bootstrap: int) -> dict:
    from pipeline.params import load_params
    from pipeline.stage_two.dataset import load_task_data
    from pipeline.stage_two.metrics import evaluate_candidates

    here = Path.cwd()
    os.chdir(work)
    try:
        out = {}
        for task in tasks:
            done = [m for m in MODELS if (work / head_dir(task, f"{m}-post") / "predictions.npz").exists()]
            if not done:
                continue
            data = load_task_data(load_params(), task)
            candidates, runs = {}, {}
            for model in done:
                folder = work / head_dir(task, f"{model}-post")
                saved, meta = np.load(folder / "predictions.npz"), json.loads((folder / "meta.json").read_text())
                candidates[model], candidates[f"{model}: before fine-tuning"] = saved["test_folds"][0], saved["probe_test_folds"][0]
                runs[model] = {"epochs": len(meta["histories"][0]["train"]), "step_s": meta["timings"]["step_s"],
                               "wall_s": times.get(f"post-train {task} {model}")}
            pairs = {"12 leads - lead I": tuple(MODELS)} if len(done) == 2 else {}
            report = evaluate_candidates(data.task, data.target[data.test], candidates, data.subjects[data.test], bootstrap, 0.95, 0, pairs)
            out[task] = {**report, "type": data.task.type, "runs": runs}
    finally:
        os.chdir(here)
    return out


def write_report(work: Path, reports: dict, init: str) -> Path:
    header = ["task", "leads", "metric", "after fine-tuning", "before fine-tuning", "AUPRC", "epochs", "step (s)", "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, report in reports.items():
        metric, digits = ("mae", 2) if report["type"] == "regression" else ("auroc", 3)
        for model, run in report["runs"].items():
            models = report["models"]
            auprc = ptbxl._cell(models[model]["auprc"], 3) if "auprc" in models[model] else "-"
            wall = f"{run['wall_s']:.0f}" if run["wall_s"] else "-"
            lines.append(f"| {task} | {'I' if model.endswith('1lead') else '12'} | {metric} | {ptbxl._cell(models[model][metric], digits)} | "
                         f"{ptbxl._cell(models[f'{model}: before fine-tuning'][metric], digits)} | {auprc} | {run['epochs']} | {run['step_s']:.3f} | {wall} |")
    text = [
        "# Post-training at the published size on a GPU (PTB-XL, 100 Hz records resampled to 500 Hz)",
        "",
        f"Command: `python benchmarks/post_train_gpu.py --init {init}` (see its docstring). Net1D at the published size "
        f"(30.6 M parameters), from {'random initialisation' if init == 'random' else 'the released checkpoint'}; folds 1-8 "
        "train, 9 the gate hold-out, 10 test; 95% subject-bootstrap intervals.",
        "",
        *lines,
        "",
        "Paired differences 12 leads - lead I: "
        + "; ".join(f"{task} {ptbxl._cell(r['paired']['12 leads - lead I'][('mae' if r['type'] == 'regression' else 'auroc')], 3, signed=True)}"
                    for task, r in reports.items() if "12 leads - lead I" in r["paired"]) + ".",
    ]
    out = REPO / "benchmarks" / "post_train_gpu.md"
    out.write_text("\n".join(text) + "\n")
    (REPO / "benchmarks" / "post_train_gpu.json").write_text(json.dumps(reports, indent=1, sort_keys=True, default=float) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "enecg" / "ptbxl-500hz-gpu")
    parser.add_argument("--init", choices=sorted(LEARNING_RATE), default="random")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--tasks", default="", help="comma-separated subset of the tasks (default: every one)")
    args = parser.parse_args()
    work = args.work.expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    ptbxl.unpack(work)
    manifest, tasks, _ = ptbxl.build_manifest(work)
    names = write_params(work, manifest, tasks, args.bootstrap, args.init, [t for t in args.tasks.split(",") if t])
    times_path = work / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    ptbxl.run_stage(work, times, "prepare", ["prepare"], "corpus.zarr")
    for task in names:
        for model in MODELS:
            ptbxl.run_stage(work, times, f"post-train {task} {model}", ["post-train", "--task", task, "--model", model], str(head_dir(task, f"{model}-post")))
    print(write_report(work, results(work, names, times, args.bootstrap), args.init).read_text())


if __name__ == "__main__":
    main()
