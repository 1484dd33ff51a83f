"""Stage two on cached embeddings vs. the published EnECG way (every frozen backbone inside every training step).

Run from the project folder (it needs corpus.zarr, params.yaml and checkpoints/ for the backbones this project
pretrains, e.g. after `dvc repro`), on one CPU thread:

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/stage_two_speedup.py \
        --sets minirocket,dlinear minirocket,dlinear,ecgfounder --epochs 20 --batch-size 16 --sample-steps 3

Every task in params `tasks`, every backbone set given by `--sets` (a set is the ensemble's experts). Both ways
train the same heads (pipeline.stage_two.heads: the closed-form probe, then EnECG's FFN + LoRA as a correction)
and the same gate (pipeline.stage_two.gate: conv encoder of the gate's leads + the experts' outputs), on the
same training rows, with the same subject-wise folds (a fresh model per fold), `--epochs` and `--batch-size`
for heads and gate, and no early stopping (`val_fraction: 0`, so every epoch runs on both sides); every other
setting is params.yaml's.

Backbones. A backbone whose checkpoint is in checkpoints/<name>/ is used as it is. A foundation-model-sized one
without its checkpoint (`ecgfounder`, `ecgfounder-1lead`: ECGFounder's Net1D, 30.8M parameters) gets one with
random weights, written by this script into a temporary folder in the released container format (the training
dict with `state_dict`, optimizer, scheduler and a numpy `val_auroc`, every unused BatchNorm entry included) and
loaded through `build_backbone`, as `enecg extract` loads the published file. Random weights cost the same
compute as the released ones (a dense CNN, no data-dependent control flow).

The cached way, MEASURED IN FULL: `enecg extract` (pipeline.stage_one.extract.extract_embeddings, on the CPU,
params' extract batch and chunk sizes) of every backbone once over the corpus, into the temporary folder; then
per task what `enecg fit-heads` does (`fit_expert` for every backbone: k fold heads, out-of-fold predictions)
and what `enecg fit-gate` does (the gate's leads, the experts' out-of-fold features, `fit_gate` of the "moe"
gate). Writing the artifacts to disk is not timed. A backbone's heads are fitted once per task and counted in
every set that holds it; the gate is fitted per set.

The EnECG way, MEASURED ON A SAMPLE AND PROJECTED: EnECG's loop trains, per task and per fold, one fresh MoE
(a head per backbone + the gate) jointly on the loss of the gated mixture, and every training step runs every
frozen backbone's forward pass (no_grad) on the minibatch's raw signals, then heads, gate, backward and AdamW
step. Each fold's heads start from their probe as here, which needs the fold's embeddings once: one more
backbone pass over the fold's rows per fold (counted). As in the previous version of this benchmark, every
backbone's input (leads, resampling, its own numpy preprocessing) is prepared in memory before training and
not timed, so the EnECG way pays only the forward passes: this favours it. Running it in full would take
hours for a foundation-model-sized backbone on a CPU, so for every set and task the script builds fold 0's
models (timed: heads with their probe fitted on the fold's cached embeddings, the gate's scalers) and times
`--sample-steps` training steps after one untimed warm-up step, each step split into the backbones' forward
passes (per backbone) and the rest (stage two's own work). The full run is then projected:

    backbone s  = per-record forward s (measured, per backbone) x records the loop feeds it
                  (epochs x the fold rows of every fold, + the probe pass: the fold rows once per fold)
    stage two s = per-step s (measured, per task) x steps (epochs x batches per fold, every fold)
                  + per-fold setup s (measured) x folds

summed over tasks. The bound is the ratio the EnECG way would reach if stage two's own compute cost nothing on
either side: the records the EnECG loop feeds each backbone / the records one extraction feeds it.
Output: the tables on stdout and benchmarks/stage_two_speedup.md (`--out`).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.layout import CORPUS
from pipeline.params import load_params
from pipeline.stage_one.backbones import build_backbone, default_checkpoint, get_config
from pipeline.stage_one.backbones.ecgfounder import PUBLISHED_1_LEAD, PUBLISHED_12_LEAD, Net1D
from pipeline.stage_one.extract import backbone_inputs, extract_embeddings
from pipeline.stage_two.dataset import TaskData, load_task_data
from pipeline.stage_two.experts import fit_expert
from pipeline.stage_two.gate import Gate, combine, expert_features, fit_gate
from pipeline.stage_two.heads import fit_head, predict
from pipeline.stage_two.losses import prediction_loss, to_prediction
from pipeline.stage_two.moe import gate_lead_signals, target_scale
from pipeline.stores import open_embeddings

RANDOM_SHAPES = {"ecgfounder": PUBLISHED_12_LEAD, "ecgfounder-1lead": PUBLISHED_1_LEAD}


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def write_random_ecgfounder(name: str, path: Path) -> None:
    """The released ECGFounder container with Net1D's own random initialisation (seeded) at the published size."""
    torch.manual_seed(0)
    net = Net1D(RANDOM_SHAPES[name])
    state = dict(net.state_dict())
    for key, shape in net.unused_keys().items():  # the training graph's BatchNorms, which forward never uses
        state[key] = torch.tensor(0) if key.endswith("num_batches_tracked") else torch.ones(shape)
    checkpoint = {
        "epoch": 0, "step": 0, "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
        "scheduler": {}, "val_auroc": np.float64(0.5),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def checkpoints(names: list[str], scratch: Path) -> dict[str, tuple[Path, str]]:
    """Backbone -> (checkpoint path, where it came from): the project's file, else random weights written here."""
    found = {}
    for name in names:
        path = default_checkpoint(name)
        if path.exists():
            found[name] = (path, f"checkpoints/{name}/{path.name}")
        elif name in RANDOM_SHAPES:
            path = scratch / "checkpoints" / name / get_config(name).checkpoint_file
            write_random_ecgfounder(name, path)
            found[name] = (path, f"random weights, released format ({path.stat().st_size / 1e6:.1f} MB)")
        else:
            sys.exit(f"{name}: no checkpoint at {path} and no random-weight writer here (one of: {', '.join(RANDOM_SHAPES)})")
    return found


# ---------------------------------------------------------------------------------------------------------------
# The cached way (measured in full)


def extract_all(names: list[str], found: dict, params: dict, scratch: Path) -> dict[str, dict]:
    """`enecg extract` of every backbone once over the corpus, on the CPU, timed (checkpoint load included)."""
    result = {}
    for name in names:
        out = scratch / "embeddings" / f"{name}.zarr"
        start = time.perf_counter()
        summary = extract_embeddings(
            name, CORPUS, out, found[name][0], int(params["extract"]["batch_size"]), int(params["extract"]["chunk_records"]), "cpu"
        )
        seconds = time.perf_counter() - start
        store = open_embeddings(out, name)
        result[name] = {"seconds": seconds, "records": int(summary["embedded"]), "embedding": store["embedding"]}
        print(f"extract {name}: {summary['embedded']} records in {seconds:.1f} s", flush=True)
    return result


def cached_heads(data: TaskData, embeddings: dict, heads: dict) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """fit-heads' work for every backbone of one task: seconds and out-of-fold predictions per backbone."""
    seconds, oof = {}, {}
    for name, extracted in embeddings.items():
        start = time.perf_counter()
        oof[name] = fit_expert(data, extracted["embedding"], heads).predictions["oof"]
        seconds[name] = time.perf_counter() - start
    return seconds, oof


def cached_gate(data: TaskData, names: list[str], oof: dict[str, np.ndarray], gate: dict) -> float:
    """fit-gate's work for one set and task ("moe" gate on the experts' out-of-fold predictions), in seconds."""
    start = time.perf_counter()
    experts = np.stack([oof[name] for name in names], axis=1)
    scale = target_scale(data)
    leads = gate_lead_signals(data.corpus, data.train, gate)
    features = expert_features(data.task, experts, scale)
    inputs = list(gate.get("inputs", ["leads", "outputs"]))
    fit_gate(data.task, leads, features, experts, data.target[data.train], data.subjects[data.train], gate, scale, inputs)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------------
# The EnECG way (a sample of its steps, timed, then projected)


def _prediction(task, head, raw: torch.Tensor) -> torch.Tensor:
    """A head's raw output -> the mixture's space (value, or probabilities), as heads.predict does, with gradients."""
    if task.type == "regression":
        base = head.get_base_model()
        raw = raw * base.y_std + base.y_mean
    return to_prediction(task, raw)


def _features(task, predictions: torch.Tensor, scale: float) -> torch.Tensor:
    """expert_features in torch: [B, E, K] predictions -> [B, E * K] gate inputs (detached)."""
    predictions = predictions.detach()
    if task.type == "regression":
        values = predictions / scale
    else:
        p = predictions.clamp(1e-4, 1 - 1e-4)
        values = torch.log(p / (1 - p))
    return values.reshape(len(values), -1)


def enecg_sample(data: TaskData, names: list[str], models: dict, embeddings: dict, heads: dict, gate: dict, steps: int) -> dict:
    """Fold 0 of EnECG's loop for one task: setup timed, then one warm-up and `steps` timed training steps.

    Returns setup seconds, the timed steps' backbone seconds per backbone and records, and their other seconds.
    """
    task, scale = data.task, target_scale(data)
    corpus = data.corpus
    rate, corpus_leads = float(corpus.attrs["sampling_rate"]), list(corpus.attrs["leads"])
    fold, fit_rows, _ = next(iter(data.folds()))
    batch_size = int(heads["batch_size"])
    order = fit_rows[np.random.default_rng(0).permutation(len(fit_rows))]
    batches = [np.sort(order[i : i + batch_size]) for i in range(0, len(order), batch_size)][: steps + 1]
    # not timed, as in EnECG's data loader: every backbone's preprocessed input and the gate's leads, in memory
    sampled = np.unique(np.concatenate(batches))
    signals = corpus["signals"].oindex[sampled]
    inputs = {name: torch.from_numpy(backbone_inputs(signals, rate, corpus_leads, models[name])) for name in names}
    leads = torch.from_numpy(gate_lead_signals(corpus, np.sort(fit_rows), gate))

    # per-fold setup (timed): heads from their probes on the fold's embeddings (the probe pass itself is
    # projected from the per-record forward time), the gate and its scalers, the optimiser
    start = time.perf_counter()
    fit_settings = {**heads, "epochs": 0}
    experts, initial = [], []
    for name in names:
        block = embeddings[name]["embedding"].oindex[np.sort(fit_rows)]
        fitted = fit_head(task, block, data.target[np.sort(fit_rows)], data.subjects[np.sort(fit_rows)], fit_settings, seed=int(heads["seed"]) + fold)
        experts.append(fitted.model)
        initial.append(predict(task, fitted.model, block))
    gate_inputs = list(gate.get("inputs", ["leads", "outputs"]))
    moe_gate = Gate(leads.shape[1], task.out_dim * len(names), len(names), gate_inputs, int(gate.get("channels", 16)), int(gate["hidden"]))
    start_features = torch.from_numpy(expert_features(task, np.stack(initial, axis=1), scale))
    moe_gate.lead_scale.fill_(float(leads.std()) or 1.0)
    moe_gate.out_mean.copy_(start_features.mean(0))
    moe_gate.out_std.copy_(start_features.std(0).clamp_min(1e-3))
    parameters = [p for expert in experts for p in expert.parameters() if p.requires_grad] + list(moe_gate.parameters())
    optimiser = torch.optim.AdamW(parameters, lr=float(heads["lr"]), weight_decay=float(heads.get("weight_decay", 0.0)))
    setup = time.perf_counter() - start

    for model in [*experts, moe_gate]:
        model.train()
    sorted_fit = np.sort(fit_rows)
    backbone_s = {name: 0.0 for name in names}
    records, other_s = 0, 0.0
    for step, batch in enumerate(batches):
        embedded, spent = [], {}
        for name in names:
            b0 = time.perf_counter()
            with torch.no_grad():
                embedded.append(models[name](inputs[name][np.searchsorted(sampled, batch)])["embedding"])
            spent[name] = time.perf_counter() - b0
        t1 = time.perf_counter()
        predictions = torch.stack([_prediction(task, expert, expert(z)) for expert, z in zip(experts, embedded)], dim=1)
        weights = moe_gate(leads[np.searchsorted(sorted_fit, batch)], _features(task, predictions, scale))
        loss = prediction_loss(task, combine(weights, predictions), torch.from_numpy(data.target[batch]), scale)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        t2 = time.perf_counter()
        if step == 0:
            continue  # warm-up: lazy allocations, kernel choice
        for name in names:
            backbone_s[name] += spent[name]
        records += len(batch)
        other_s += t2 - t1  # stage two's own work in this step
    timed = len(batches) - 1
    return {"setup_s": setup, "backbone_s": backbone_s, "records": records, "other_s_per_step": other_s / max(timed, 1), "steps": timed}


def loop_counts(data: TaskData, epochs: int, batch_size: int) -> dict[str, int]:
    """What EnECG's loop does for one task: passes, records fed to each backbone, optimiser steps, folds."""
    sizes = [len(fit_rows) for _, fit_rows, _ in data.folds()]
    return {
        "folds": len(sizes),
        "passes": len(sizes) * epochs,
        "probe_passes": len(sizes),
        "records": epochs * sum(sizes) + sum(sizes),
        "steps": epochs * sum(math.ceil(size / batch_size) for size in sizes),
    }


# ---------------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["minirocket,dlinear", "minirocket,dlinear,ecgfounder"], help="backbone sets, comma-separated")
    parser.add_argument("--tasks", nargs="+", help="default: params tasks")
    parser.add_argument("--epochs", type=int, default=20, help="heads' and gate's epochs on both sides (20: the fewest an early-stopped head runs at patience 20)")
    parser.add_argument("--batch-size", type=int, default=16, help="heads' and gate's batch on both sides (EnECG's: 16)")
    parser.add_argument("--sample-steps", type=int, default=3, help="timed EnECG steps per set and task (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both ways")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("stage_two_speedup.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params()
    tasks = args.tasks or list(params["tasks"])
    sets = [name.split(",") for name in args.sets]
    names = list(dict.fromkeys(name for backbones in sets for name in backbones))
    same = {"epochs": args.epochs, "batch_size": args.batch_size, "val_fraction": 0.0}
    heads, gate = {**params["heads"], **same}, {**params["gate"], **same}
    data = {task: load_task_data(params, task) for task in tasks}
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="stage_two_speedup-") as folder:
        scratch = Path(folder)
        found = checkpoints(names, scratch)
        extracted = extract_all(names, found, params, scratch)
        models = {name: build_backbone(name, found[name][0]) for name in names}
        parameters = {name: sum(p.numel() for p in models[name].parameters()) for name in names}
        head_s, gate_s, samples = {}, {}, {}
        for task in tasks:
            head_s[task], oof = cached_heads(data[task], extracted, heads)
            for index, backbones in enumerate(sets):
                gate_s[task, index] = cached_gate(data[task], backbones, oof, gate)
            print(f"cached {task}: heads " + ", ".join(f"{n} {s:.1f} s" for n, s in head_s[task].items())
                  + "; gates " + ", ".join(f"{gate_s[task, i]:.1f} s" for i in range(len(sets))), flush=True)
        for index, backbones in enumerate(sets):
            for task in tasks:
                samples[task, index] = enecg_sample(data[task], backbones, models, extracted, heads, gate, args.sample_steps)
                sample = samples[task, index]
                print(f"enecg sample {'+'.join(backbones)} {task}: setup {sample['setup_s']:.2f} s, "
                      + ", ".join(f"{n} {s / sample['records'] * 1e3:.1f} ms/record" for n, s in sample["backbone_s"].items())
                      + f", rest {sample['other_s_per_step'] * 1e3:.1f} ms/step", flush=True)
    load_after = os.getloadavg()[0]

    # per-record forward seconds in the loop, per set and backbone (pooled over the set's tasks)
    counts = {task: loop_counts(data[task], args.epochs, args.batch_size) for task in tasks}
    rows, detail = [], []
    for index, backbones in enumerate(sets):
        per_record = {
            name: sum(samples[t, index]["backbone_s"][name] for t in tasks) / sum(samples[t, index]["records"] for t in tasks)
            for name in backbones
        }
        backbone_total = sum(per_record[name] * counts[t]["records"] for name in backbones for t in tasks)
        stage_two_total = sum(
            samples[t, index]["other_s_per_step"] * counts[t]["steps"] + samples[t, index]["setup_s"] * counts[t]["folds"] for t in tasks
        )
        enecg = backbone_total + stage_two_total
        extraction = sum(extracted[name]["seconds"] for name in backbones)
        stage_two_cached = sum(head_s[t][name] for t in tasks for name in backbones) + sum(gate_s[t, index] for t in tasks)
        cached = extraction + stage_two_cached
        fed = sum(counts[t]["records"] for t in tasks)
        extracted_records = extracted[backbones[0]]["records"]
        rows.append({
            "set": ", ".join(backbones), "enecg": enecg, "backbone": backbone_total, "stage_two": stage_two_total,
            "extraction": extraction, "cached_stage_two": stage_two_cached, "cached": cached,
            "ratio": enecg / cached, "rerun": enecg / stage_two_cached, "bound": fed / extracted_records,
            "time_bound": backbone_total / extraction,
        })  # fmt: skip
        for name in backbones:
            detail.append((", ".join(backbones), name, per_record[name], extracted[name]["seconds"] / extracted[name]["records"]))

    passes = sum(counts[t]["passes"] for t in tasks)
    probe_passes = sum(counts[t]["probe_passes"] for t in tasks)
    fed = sum(counts[t]["records"] for t in tasks)
    steps = sum(counts[t]["steps"] for t in tasks)
    n_records = extracted[names[0]]["records"]
    k = counts[tasks[0]]["folds"]
    command = "OMP_NUM_THREADS=1 nice -n 15 python benchmarks/stage_two_speedup.py --sets " + " ".join(args.sets)
    command += f" --epochs {args.epochs} --batch-size {args.batch_size} --sample-steps {args.sample_steps} --threads {args.threads}"
    if args.tasks:
        command += " --tasks " + " ".join(args.tasks)
    train_sizes = sorted({len(data[t].train) for t in tasks})
    lines = [
        f"# Stage two: cached embeddings vs. backbones in every step ({len(tasks)} tasks x {k} folds x {args.epochs} epochs)",
        "",
        f"Command (from the project folder, after `dvc repro`): `{command}`",
        "",
        f"Tasks: {', '.join(tasks)}; {'/'.join(map(str, train_sizes))} training records, {k} subject-wise folds "
        f"({'/'.join(str(len(f[1])) for f in data[tasks[0]].folds())} fold rows), corpus {n_records} records; heads and gate "
        f"{args.epochs} epochs, batch {args.batch_size}, no early stopping, on both sides. "
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} on "
        f"{torch.get_num_threads()} thread(s); 1-minute load average {load_before:.1f} before, {load_after:.1f} after "
        "(the machine is shared: above the core count, other work competed for the cores).",
        "",
        "Backbones: " + "; ".join(
            f"{name} ({parameters[name]:,} parameters, {get_config(name).embedding_dim}-d; {found[name][1]})" for name in names
        ) + ".",
        "",
        "## Backbone passes",
        "",
        f"The EnECG loop runs every backbone over a fold's rows once per epoch: tasks x folds x epochs = "
        f"{len(tasks)} x {k} x {args.epochs} = **{passes:,} passes** (+ {probe_passes} for the heads' probes, one per task "
        f"and fold), {fed:,} records through each backbone in {steps:,} optimiser steps. The cached way makes "
        f"**1 pass**: one extraction of the {n_records} corpus records, which every task, fold, epoch and later "
        f"change to heads or gate reuses. Bound = {fed:,} / {n_records} = **{fed / n_records:,.1f}x**: the speed-up "
        "if stage two's own compute cost nothing on either side. More epochs raise the EnECG way's passes, and the "
        f"bound, in proportion; with params' early stopping (patience {params['heads'].get('patience', 20)}) a head "
        "runs at least that many epochs, up to params' maximum "
        f"({params['heads']['epochs']}).",
        "",
        "## Result",
        "",
        "| backbones | EnECG way s (projected) | of which backbones | of which stage two | cached way s (measured) | "
        "of which extraction | of which heads + gate | **speed-up** | bound | rerun after a head/gate change |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['set']} | {row['enecg']:,.0f} | {row['backbone']:,.0f} | {row['stage_two']:,.0f} | {row['cached']:,.1f} | "
            f"{row['extraction']:,.1f} | {row['cached_stage_two']:,.1f} | **{row['ratio']:,.1f}x** | {row['bound']:,.1f}x | "
            f"{row['rerun']:,.1f}x |"
        )
    lines += [
        "",
        "Speed-up = EnECG way / cached way. Rerun = EnECG way / the cached way's heads + gate alone: the cost of "
        "one more head or gate setting, for which the cached way reuses its extraction and the EnECG way repeats "
        "everything.",
        "",
        "Per-record backbone forward time, in the EnECG loop's minibatches (no_grad, batch "
        f"{args.batch_size}, timed in the sampled steps) and in the one extraction (batch {params['extract']['batch_size']}, "
        "the backbone's preprocessing, the corpus reads and the store writes included):",
        "",
        "| set | backbone | loop ms/record | extraction ms/record |",
        "|---|---|--:|--:|",
    ]
    lines += [f"| {s} | {name} | {loop * 1e3:.1f} | {extraction * 1e3:.1f} |" for s, name, loop, extraction in detail]
    lines += [
        "",
        "## What is measured, what is projected",
        "",
        "- **Measured in full**: the cached way. `enecg extract`'s `extract_embeddings` of every backbone over the "
        "whole corpus on the CPU (checkpoint load included), then per task `fit_expert` for every backbone "
        "(what `enecg fit-heads` runs: probe + FFN/LoRA per fold, out-of-fold predictions) and the gate's leads, "
        "features and `fit_gate` (what `enecg fit-gate` runs), with the settings above; writing artifacts is not timed.",
        f"- **Measured on a sample**: the EnECG loop, for every set and task: fold 0's setup (heads from their probes "
        f"on the fold's embeddings, gate scalers, optimiser) and {args.sample_steps} full training steps after one "
        "untimed warm-up step, each split into the backbones' forward passes and the rest (heads, gate, loss, "
        "backward, AdamW step). Preparing the backbones' inputs is not timed on this side (favours the EnECG way).",
        f"- **Projected**: the full EnECG run = measured ms/record x {fed:,} records per backbone (its "
        f"{passes:,} passes + {probe_passes} probe passes) + measured stage-two s/step x {steps:,} steps (a fold's last, "
        "smaller batch counted as a full one) + "
        f"measured setup x {len(tasks) * k} folds. The bound is a count, not a timing. "
        "'Speed-up' therefore divides a projected time by a measured one.",
    ]
    time_bounds = ", ".join(f"{row['set']}: {row['time_bound']:,.1f}x" for row in rows)
    lines += [
        f"- The bound in time (projected backbone seconds of the loop / measured extraction seconds) is {time_bounds}; "
        "it differs from the count by the per-record cost of a minibatch of "
        f"{args.batch_size} against extraction's batches (which also pay preprocessing and I/O).",
    ]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
