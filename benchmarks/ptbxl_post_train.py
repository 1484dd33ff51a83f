"""The ECGFounder post-training study on PTB-XL, and the ensemble that a post-trained Net1D joins.

    python benchmarks/ptbxl_post_train.py [--work DIR] [--jobs N] [--bootstrap N] [--report-only]

Uses benchmarks/ptbxl.py's work folder, corpus and stage one (prepare, then pretrain and extract of minirocket
and dlinear; run here when missing). Then, for each task of TASKS (the ensemble also for ENSEMBLE_TASKS), each run in its own folder WORK/post_train/RUN/
(the benchmark's params.yaml with fold 9 as the gate hold-out and the run's switches; links to the corpus, the
checkpoints and the embeddings):

1. the study's ablation, `enecg post-train` with Net1D at params.yaml's `cpu` size from random initialisation:
   plain fine-tuning, + stochastic depth (params.yaml's default from random initialisation), + preview linear
   probing, both (the study's recipe), and both on lead I only (`ecgfounder-1lead`);
2. the ensemble {minirocket heads, dlinear heads, the default recipe's Net1D} in its run's folder: fit-heads on folds
   1-8 (one model per expert, the gate hold-out split), fit-gate on the experts' fold-9 predictions, evaluate on
   fold 10; no row the gate trains on was seen by any expert (tests/test_post_train.py).

Writes benchmarks/ptbxl_post_train.md and .json: macro AUROC and AUPRC with 95% subject-bootstrap intervals,
paired differences (each switch - plain fine-tuning, 12 leads - lead I, MoE - best expert, MoE - mean), each
run's held-out macro AUROC per epoch (its learning curve: whether more epochs would help) and its wall time.

`--jobs N` runs N stages at once, each on one thread (OMP_NUM_THREADS=1, as ptbxl.py), so that on 2 cores two
post-training runs share the machine; the ensembles start as soon as their Net1D is trained. A rerun skips
what WORK/times.json records as done (ptbxl.py's rule), so a killed run resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import chdir
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ptbxl  # noqa: E402  (the PTB-XL benchmark: work folder, stage one, stage runner, tables)
from pipeline.layout import head_dir, post_trained_expert  # noqa: E402  (ptbxl put the project on sys.path)

TASKS = ["superclass", "rhythm"]  # the ablation's
# the ensemble's: also two label sets on which the ensemble of frozen-backbone experts alone fell below its best
# expert (benchmarks/ptbxl.md), to see what a strong, different expert changes there
ENSEMBLE_TASKS = [*TASKS, "subclass", "scp_all"]
# run -> (model, stochastic depth, preview probe). The ensemble's Net1D is params.yaml's default recipe from random
# initialisation, "stochastic depth" (preview_probe: auto probes only a checkpoint's features): chosen on the runs'
# held-out training subjects (best macro AUROC 0.907 / 0.979 against the study's "both", 0.885 / 0.917), not on the test fold.
RUNS = {
    "both": ("ecgfounder", 0.1, True),
    "plain": ("ecgfounder", 0.0, False),
    "stochastic depth": ("ecgfounder", 0.1, False),
    "preview probe": ("ecgfounder", 0.0, True),
    "both, lead I": ("ecgfounder-1lead", 0.1, True),
}
ENSEMBLE_RUN = "stochastic depth"
LINKED = ["corpus.zarr", "checkpoints", "embeddings"]  # stage one's outputs, shared by every run's folder
OUT = ptbxl.REPO / "benchmarks" / "ptbxl_post_train"


def run_folder(work: Path, run: str) -> Path:
    return work / "post_train" / run.replace(", ", "-").replace(" ", "-")


def expert_folder(work: Path, run: str, task: str) -> Path:
    return run_folder(work, run) / head_dir(task, post_trained_expert(RUNS[run][0]))


def set_up_run(work: Path, run: str, base: dict) -> Path:
    """WORK/post_train/RUN/ with links to stage one's outputs and the benchmark's params with the run's switches."""
    model, stochastic_depth, preview_probe = RUNS[run]
    folder = run_folder(work, run)
    folder.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(work / name, target_is_directory=True)
    params = copy.deepcopy(base)
    params["split"]["gate_folds"] = [9]
    params.update(tasks=list(ENSEMBLE_TASKS), post_trained=[model])
    params["post_train"].update(init="random", size="cpu", stochastic_depth=stochastic_depth, preview_probe=preview_probe)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def run_all(work: Path, times: dict, jobs: int) -> None:
    """Every post-training run and both ensembles, `jobs` stages at a time (the recipe's runs first)."""
    base = yaml.safe_load((work / "params.yaml").read_text())
    folders = {run: set_up_run(work, run, base) for run in RUNS}

    def relative(path: Path) -> str:
        return str(path.relative_to(work))

    def post_train(run: str, task: str) -> None:
        ptbxl.run_stage(work, times, f"post-train {task} {run}", ["post-train", "--task", task, "--model", RUNS[run][0]],
                        relative(expert_folder(work, run, task)), cwd=folders[run])

    def ensemble(task: str, trained: Future) -> None:
        trained.result()  # the default recipe's Net1D of this task, an expert of the ensemble
        folder = folders[ENSEMBLE_RUN]
        for name in ptbxl.BACKBONES:
            ptbxl.run_stage(work, times, f"ensemble {task}: fit-heads {name}", ["fit-heads", "--task", task, "--model", name],
                            relative(folder / head_dir(task, name)), cwd=folder)
        ptbxl.run_stage(work, times, f"ensemble {task}: fit-gate", ["fit-gate", "--task", task], relative(folder / "gates" / task), cwd=folder)
        ptbxl.run_stage(work, times, f"ensemble {task}: evaluate", ["evaluate", "--task", task], relative(folder / "metrics" / f"{task}.json"), cwd=folder)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        recipe = {task: pool.submit(post_train, ENSEMBLE_RUN, task) for task in ENSEMBLE_TASKS}
        pending = [*recipe.values(), *(pool.submit(ensemble, task, recipe[task]) for task in ENSEMBLE_TASKS)]
        pending += [pool.submit(post_train, run, task) for run in RUNS if run != ENSEMBLE_RUN for task in TASKS]
        for future in pending:
            future.result()  # a failed stage raises here, after the others finished


# ---------------------------------------------------------------------------------------------------------
# Report


def ablation_report(work: Path, task: str, times: dict, bootstrap: int) -> dict | None:
    """The finished runs' Net1D on the test fold (before and after fine-tuning): macro AUROC/AUPRC with
    subject-bootstrap intervals, paired differences against plain fine-tuning and 12 leads - lead I, and each
    run's epochs, held-out AUROC per epoch and times; None if no run of `task` finished."""
    from pipeline.params import load_params
    from pipeline.stage_two.dataset import load_task_data
    from pipeline.stage_two.metrics import evaluate_candidates

    done = [run for run in RUNS if (expert_folder(work, run, task) / "predictions.npz").exists()]
    if not done:
        return None
    with chdir(run_folder(work, done[0])):  # the runs share the split: any one's folder gives the rows
        data = load_task_data(load_params(), task)
    candidates, runs = {}, {}
    for run in done:
        saved = np.load(expert_folder(work, run, task) / "predictions.npz")
        meta = json.loads((expert_folder(work, run, task) / "meta.json").read_text())
        history = meta["histories"][0]
        candidates[run], candidates[f"{run}: before fine-tuning"] = saved["test_folds"][0], saved["probe_test_folds"][0]
        model, stochastic_depth, preview_probe = RUNS[run]
        runs[run] = {"model": model, "stochastic_depth": stochastic_depth, "preview_probe": preview_probe,
                     "epochs": len(history["train"]), "held_out_auroc": [-s for s in history.get("score", [])],
                     "step_s": meta["timings"]["step_s"], "wall_s": times.get(f"post-train {task} {run}"),
                     "shape": meta["shape"], "rate": meta["spec"]["sampling_rate"]}
    pairs = {f"{run} - plain": (run, "plain") for run in done if run != "plain" and "plain" in done and RUNS[run][0] == "ecgfounder"}
    if {"both", "both, lead I"} <= set(done):
        pairs["12 leads - lead I"] = ("both", "both, lead I")
    report = evaluate_candidates(data.task, data.target[data.test], candidates, data.subjects[data.test], bootstrap, 0.95, 0, pairs)
    return {**report, "runs": runs, "n_train": len(data.train), "n_gate": len(data.gate), "n_test": len(data.test)}


def ablation_section(task: str, report: dict) -> list[str]:
    runs, models = report["runs"], report["models"]
    header = ["run", "leads", "stochastic depth", "preview probe", "epochs", "macro AUROC", "macro AUPRC",
              "AUROC before fine-tuning", "step (s)", "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, info in runs.items():
        wall = f"{info['wall_s']:.0f}" if info["wall_s"] else "-"
        lines.append(f"| {run} | {'I' if info['model'].endswith('1lead') else '12'} | {info['stochastic_depth']:g} | "
                     f"{'yes' if info['preview_probe'] else 'no'} | {info['epochs']} | {ptbxl._cell(models[run]['auroc'], 3)} | "
                     f"{ptbxl._cell(models[run]['auprc'], 3)} | {ptbxl._cell(models[f'{run}: before fine-tuning']['auroc'], 3)} | "
                     f"{info['step_s']:.3f} | {wall} |")
    paired = ["| paired difference | macro AUROC | macro AUPRC |", "|---|---|---|"]
    paired += [f"| {pair} | {ptbxl._cell(d['auroc'], 3, signed=True)} | {ptbxl._cell(d['auprc'], 3, signed=True)} |"
               for pair, d in report["paired"].items()]
    curves = ["| run | held-out macro AUROC at epoch 0 (the start), 1, 2, ... |", "|---|---|"]
    curves += [f"| {run} | {' '.join(f'{v:.3f}' for v in info['held_out_auroc'])} |" for run, info in runs.items()]
    first = next(iter(runs.values()))
    return [
        f"### {task}",
        "",
        f"Net1D at params.yaml's `cpu` size (filters {first['shape']['filters']}, blocks {first['shape']['blocks']}, "
        f"{first['rate']:g} Hz), from random initialisation, trained on folds 1-8 ({report['n_train']} records, its "
        f"early-stopping subjects among them), fold 9 ({report['n_gate']}) held out for the gate, tested on fold 10 "
        f"({report['n_test']}; {report['bootstrap']['labels_used']} labels, {report['bootstrap']['resamples_used']} "
        "resamples used). `before fine-tuning`: the network as it started (after the preview probe, or with its "
        "random classifier).",
        "",
        *lines,
        "",
        *paired,
        "",
        "Learning curves (early stopping keeps the best epoch; a curve still rising at its last epoch says more "
        "epochs would help):",
        "",
        *curves,
    ]


def ensemble_section(folder: Path, reports: dict[str, dict]) -> list[str]:
    return [
        "## The ensemble with a post-trained Net1D",
        "",
        f"The `{ENSEMBLE_RUN}` run's Net1D (params.yaml's default recipe from random initialisation, chosen on the "
        "runs' held-out training subjects) joins the minirocket and dlinear heads (trained here on folds 1-8, one "
        "model each); the gate learns from the three experts' predictions for fold 9, which none of them trained "
        "on, and everything is tested on fold 10. `probe:ecgfounder-post` is the Net1D as it started (random "
        "weights, no preview probe). Paired differences from the same subject resamples; the best expert is chosen "
        "on the test rows, which flatters it.",
        "",
        *ptbxl.results_table(reports),
        "",
        ptbxl.reading(reports),
        "",
        "Gate ablations (learned constant weights, experts' outputs only, lead II only, both = the MoE):",
        "",
        *ptbxl.ablation_table(reports),
        "",
        "Mean gate weight of each expert on the test records:",
        "",
        *ptbxl.gate_weights_table(reports),
        "",
        "The labels that move MoE - best expert most (each label's AUROC difference over the number of labels in "
        "the macro average):",
        "",
        *ptbxl.moe_gap_table(folder, reports, shown=3),
    ]


def write_report(work: Path, times: dict, bootstrap: int) -> Path:
    ablations = {task: report for task in TASKS if (report := ablation_report(work, task, times, bootstrap))}
    metrics = run_folder(work, ENSEMBLE_RUN) / "metrics"
    reports = {task: json.loads((metrics / f"{task}.json").read_text()) for task in ENSEMBLE_TASKS if (metrics / f"{task}.json").exists()}
    missing = [f"post-train {task} {run}" for task in TASKS for run in RUNS if run not in ablations.get(task, {}).get("runs", {})]
    missing += [f"ensemble {task}" for task in ENSEMBLE_TASKS if task not in reports]
    stage_rows = [f"| {key} | {seconds:.0f} |" for key, seconds in times.items() if key.startswith(("post-train", "ensemble"))]
    text = [
        "# PTB-XL: post-training (ECGFounder's recipe) and the ensemble it joins",
        "",
        f"Command: `python benchmarks/ptbxl_post_train.py --jobs 2` (see its docstring). Machine-readable: "
        f"`benchmarks/ptbxl_post_train.json`. Data, split and stage one as benchmarks/ptbxl.md (PTB-XL at 100 Hz, "
        f"ecg_id <= 10000); {bootstrap} subject-level bootstrap resamples.",
        "",
        *([f"Not run yet (`python benchmarks/ptbxl_post_train.py` resumes): {', '.join(missing)}.", ""] if missing else []),
        "## Post-training ablation",
        "",
    ]
    for task, report in ablations.items():
        text += [*ablation_section(task, report), ""]
    if reports:
        text += [*ensemble_section(run_folder(work, ENSEMBLE_RUN), reports), ""]
    text += ["## Wall time of each stage (this 2-core machine, `nice -n 10`, one thread per stage, "
             "two stages at once with --jobs 2)", "", "| stage | seconds |", "|---|---|", *stage_rows, "",
             f"Load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}."]
    out = OUT.with_suffix(".md")
    out.write_text("\n".join(text) + "\n")
    ptbxl.write_json_summary(reports, OUT.with_suffix(".json"), ablation=ablations)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "enecg" / "ptbxl-100hz")
    parser.add_argument("--bootstrap", type=int, default=1000, help="evaluation bootstrap resamples")
    parser.add_argument("--jobs", type=int, default=1, help="stages run at once, each on one thread")
    parser.add_argument("--report-only", action="store_true", help="run nothing; write the report of what finished")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"  # inherited by the stages
    work = args.work.expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    ptbxl.unpack(work)
    manifest, tasks, _ = ptbxl.build_manifest(work)
    names = ptbxl.write_params(work, manifest, tasks, args.bootstrap)
    times_path = work / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    if not args.report_only:
        ptbxl.run_pipeline(work, names, times, stage_one_only=True)
        run_all(work, times, args.jobs)
    print(write_report(work, times, args.bootstrap).read_text())


if __name__ == "__main__":
    main()
