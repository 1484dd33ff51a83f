"""Our torch MiniRocket against aeon's on real PTB-XL records: feature agreement and throughput.

    python benchmarks/minirocket_vs_aeon.py [--data ../shared/data/ptbxl-500] [--out benchmarks/minirocket_vs_aeon.md]

Records of strat_fold 1-8 fit aeon's MiniRocket (default 10,000 -> 9,996 features); our module gets aeon's
fitted parameters and transforms the other records, which are compared feature by feature. We count
exactly (float64); aeon in float32, so outputs equal to a bias in exact arithmetic (common: WFDB samples
are multiples of 0.001 mV) fall on either side of it in aeon. The report gives the differences in flipped
outputs, and the smallest bias shift eps such that aeon's features lie between our exact ones with the
biases raised and lowered by eps. Our own fit (same procedure, our RNG) is checked for being as useful as
aeon's with the usual MiniRocket classifier (standardised features + ridge) on sex.
Throughput: ECGs/s for 12 x 1000 records, ours at batch 32 (CPU, and CUDA when there is one), aeon; with
one thread and with all cores; best of three runs, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import aeon
import numpy as np
import torch
import wfdb
from aeon.transformations.collection.convolution_based import MiniRocket as AeonMiniRocket
from sklearn.linear_model import RidgeClassifierCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.stage_one.backbones.minirocket import KERNEL_LENGTH, NUM_KERNELS, MiniRocket, checkpoint_from_aeon, fit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.shared_dir import DATA  # noqa: E402  ($ENECG_SHARED, else ../shared)
BATCH = 32


def load_ptbxl(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """100 Hz records [N, 12, 1000] in millivolts, their strat_fold and sex."""
    with open(folder / "ptbxl_database.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    signals = np.stack([wfdb.rdsamp(str(folder / row["filename_lr"]))[0].T for row in rows]).astype(np.float32)
    folds = np.array([int(row["strat_fold"]) for row in rows])
    sex = np.array([int(row["sex"]) for row in rows])
    return signals, folds, sex


def best_seconds(run, repeats: int = 3) -> float:
    run()  # warm-up: numba compilation, oneDNN primitive creation, CUDA context
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def with_threads(threads: int, run):
    """Run with torch and numba limited to `threads` (numba via aeon's n_jobs), restoring torch's count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run()
    finally:
        torch.set_num_threads(previous)


def transform(model: MiniRocket, signals: np.ndarray, device: str) -> np.ndarray:
    with torch.no_grad():
        batches = [
            model(torch.from_numpy(signals[start : start + BATCH]).to(device))["embedding"].cpu()
            for start in range(0, len(signals), BATCH)
        ]
    if device == "cuda":
        torch.cuda.synchronize()
    return torch.cat(batches).numpy()


def outputs_counted(model: MiniRocket) -> np.ndarray:
    """Per feature, how many outputs its PPV averages: all of them, or the valid part for every other kernel."""
    counted = []
    for j, (dilation, count) in enumerate(zip(model.dilations, model.features_per_dilation)):
        per_kernel = np.full(NUM_KERNELS, model.samples)
        per_kernel[(j + 1) % 2 :: 2] -= (KERNEL_LENGTH - 1) * dilation
        counted.append(np.repeat(per_kernel, count))
    return np.concatenate(counted)


def sex_accuracy(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    classifier = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)))
    return float(classifier.fit(train, y_train).score(test, y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "ptbxl-500")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "minirocket_vs_aeon.md")
    args = parser.parse_args()

    signals, folds, sex = load_ptbxl(args.data)
    train, test = folds <= 8, folds > 8
    fit_start = time.perf_counter()
    reference = AeonMiniRocket(random_state=0, n_jobs=os.cpu_count()).fit(signals[train])
    aeon_fit_s = time.perf_counter() - fit_start
    model = MiniRocket(checkpoint_from_aeon(reference.parameters, 12, 1000)).eval()

    expected = reference.transform(signals[test])
    got = transform(model, signals[test], "cpu")
    difference = np.abs(got.astype(np.float64) - expected)
    flips = np.rint(difference * outputs_counted(model))
    differing = difference > 0
    checkpoint = checkpoint_from_aeon(reference.parameters, 12, 1000)
    bracket = "none of 1e-6 .. 1e-3"
    for eps in (1e-6, 1e-5, 1e-4, 1e-3):
        raised, lowered = (
            transform(MiniRocket({**checkpoint, "biases": checkpoint["biases"].double() + shift}), signals[test], "cpu")
            for shift in (eps, -eps)
        )
        if (raised <= expected).all() and (expected <= lowered).all():
            bracket = f"{eps:g} mV"
            break

    fit_start = time.perf_counter()
    own = MiniRocket(fit(signals[train], seed=0)).eval()
    own_fit_s = time.perf_counter() - fit_start
    accuracy_aeon = sex_accuracy(reference.transform(signals[train]), sex[train], expected, sex[test])
    own_train, own_test = transform(own, signals[train], "cpu"), transform(own, signals[test], "cpu")
    accuracy_own = sex_accuracy(own_train, sex[train], own_test, sex[test])

    records = signals[test]
    cores = os.cpu_count()
    throughput = {}
    for threads in (1, cores):
        reference.set_params(n_jobs=threads)
        throughput[f"aeon, {threads} thread(s)"] = len(records) / best_seconds(lambda: reference.transform(records))
        ours_s = with_threads(threads, lambda: best_seconds(lambda: transform(model, records, "cpu")))
        throughput[f"ours, CPU, batch {BATCH}, {threads} thread(s)"] = len(records) / ours_s
    if torch.cuda.is_available():
        model.cuda()
        name = f"ours, {torch.cuda.get_device_name()}, batch {BATCH}"
        throughput[name] = len(records) / best_seconds(lambda: transform(model, records, "cuda"))

    lines = [
        "# MiniRocket: ours (torch) vs aeon",
        "",
        f"`python benchmarks/minirocket_vs_aeon.py`: {args.data.name}, 100 Hz, 12 x 1000; fit on strat_fold 1-8 "
        f"({train.sum()} records), compared on folds 9-10 ({test.sum()} records), {got.shape[1]} features.",
        f"aeon {aeon.__version__}, torch {torch.__version__}, {cores} CPU cores ({platform.machine()}), load average "
        f"{os.getloadavg()[0]:.1f} at the end (the machine may be shared: throughput is indicative).",
        "",
        "## Same fitted parameters (aeon's) -> same features",
        "",
        f"- max abs difference: {difference.max():.3g}",
        f"- features that differ: {differing.sum()} of {differing.size} ({differing.mean():.2e})",
        f"- flipped outputs per differing feature: median {np.median(flips[differing]):.0f}, max {int(flips.max())} "
        "(a flip moves a PPV by 1/outputs counted)",
        f"- aeon lies between our exact features with biases raised / lowered by: {bracket}",
        "",
        "## Own fit (same procedure, own RNG) vs aeon's fit",
        "",
        f"- fit on {train.sum()} records: aeon {aeon_fit_s:.2f} s, ours {own_fit_s:.2f} s",
        "- sex, standardised features + RidgeClassifierCV, test accuracy: "
        f"aeon fit {accuracy_aeon:.3f}, our fit {accuracy_own:.3f}",
        "",
        "## Throughput (ECGs/s, best of 3)",
        "",
        "| transform | ECGs/s |",
        "|---|---|",
        *(f"| {name} | {value:.1f} |" for name, value in throughput.items()),
        "",
        "torch's OpenMP threads stall when the cores are oversubscribed (load average above the core count),",
        "while aeon splits whole records across its threads: on a shared machine compare the 1-thread rows.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
