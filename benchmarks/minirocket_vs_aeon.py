"""Our torch MiniRocket against aeon's on real PTB-XL records: feature agreement and throughput.

    python benchmarks/minirocket_vs_aeon.py [--data ../shared/data/ptbxl-500] [--out benchmarks/minirocket_vs_aeon.md]

Records of strat_fold 1-8 fit aeon's MiniRocket (default 10,000 -> 9,996 features); our module gets aeon's
fitted parameters and transforms the other records, which are compared feature by feature. A difference
is an output within float rounding of its bias landing on the other side in a different summation order,
so it is reported in units of flipped outputs. Our own fit (same procedure, our RNG) is checked for being
as useful as aeon's with the usual MiniRocket classifier (standardised features + ridge) on sex.
Throughput: ECGs/s for 12 x 1000 records, ours at batch 32 (CPU, and CUDA when there is one), aeon on all
CPU cores; best of three runs, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
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

from pipeline.backbones.minirocket import KERNEL_LENGTH, NUM_KERNELS, MiniRocket, checkpoint_from_aeon, fit

ROOT = Path(__file__).resolve().parents[1]
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
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ptbxl-500")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "minirocket_vs_aeon.md")
    args = parser.parse_args()

    signals, folds, sex = load_ptbxl(args.data)
    train, test = folds <= 8, folds > 8
    fit_start = time.perf_counter()
    reference = AeonMiniRocket(random_state=0, n_jobs=-1).fit(signals[train])
    aeon_fit_s = time.perf_counter() - fit_start
    model = MiniRocket(checkpoint_from_aeon(reference.parameters, 12, 1000)).eval()

    expected = reference.transform(signals[test])
    got = transform(model, signals[test], "cpu")
    difference = np.abs(got.astype(np.float64) - expected)
    flips = np.rint(difference * outputs_counted(model))
    differing = difference > 0

    fit_start = time.perf_counter()
    own = MiniRocket(fit(signals[train], seed=0)).eval()
    own_fit_s = time.perf_counter() - fit_start
    accuracy_aeon = sex_accuracy(reference.transform(signals[train]), sex[train], expected, sex[test])
    accuracy_own = sex_accuracy(transform(own, signals[train], "cpu"), sex[train], transform(own, signals[test], "cpu"), sex[test])

    records = signals[test]
    throughput = {"aeon (numba, all cores)": len(records) / best_seconds(lambda: reference.transform(records))}
    throughput[f"ours, CPU, batch {BATCH}"] = len(records) / best_seconds(lambda: transform(model, records, "cpu"))
    if torch.cuda.is_available():
        model.cuda()
        name = f"ours, {torch.cuda.get_device_name()}, batch {BATCH}"
        throughput[name] = len(records) / best_seconds(lambda: transform(model, records, "cuda"))

    lines = [
        "# MiniRocket: ours (torch) vs aeon",
        "",
        f"`python benchmarks/minirocket_vs_aeon.py`: {args.data.name}, 100 Hz, 12 x 1000; fit on strat_fold 1-8 "
        f"({train.sum()} records), compared on folds 9-10 ({test.sum()} records), {got.shape[1]} features.",
        f"aeon {aeon.__version__}, torch {torch.__version__}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"load average {os.getloadavg()[0]:.1f} at the end (the machine may be shared: throughput is indicative).",
        "",
        "## Same fitted parameters (aeon's) -> same features",
        "",
        f"- max abs difference: {difference.max():.3g}",
        f"- features that differ: {differing.sum()} of {differing.size} ({differing.mean():.2e})",
        f"- max flipped outputs in one feature: {int(flips.max())} (a flip moves a PPV by 1/outputs counted)",
        "",
        "## Own fit (same procedure, own RNG) vs aeon's fit",
        "",
        f"- fit on {train.sum()} records: aeon {aeon_fit_s:.2f} s, ours {own_fit_s:.2f} s",
        f"- sex, standardised features + RidgeClassifierCV, test accuracy: aeon fit {accuracy_aeon:.3f}, our fit {accuracy_own:.3f}",
        "",
        "## Throughput (ECGs/s, best of 3)",
        "",
        "| transform | ECGs/s |",
        "|---|---|",
        *(f"| {name} | {value:.1f} |" for name, value in throughput.items()),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
