"""How long one post-training run takes: the real recipe for one epoch, on inputs of PTB-XL's shape, projected.

    python benchmarks/post_train_time.py [--size cpu] [--leads 12] [--records 7758] [--epochs 1] [--device cpu]

Runs pipeline.stage_two.post_train.post_train (preview linear probe, fine-tuning with stochastic depth, AdamW with
warm-up + cosine, held-out loss every epoch, predictions) with params.yaml's `post_train` settings at the named
size, for `--epochs` epoch(s) over `--records` training records (default 7,758: PTB-XL folds 1-8 of the shared
ecg_id <= 10000 subset) plus a gate hold-out and a test set of an eighth of that each (PTB-XL's folds 9 and 10),
on random signals with 5 labels (superclass). Records are 10 s at the size's rate. The signals' content does not
change the time, so this needs no data. It measures the probe's feature pass and fit, the median optimiser step,
one epoch (steps + held-out loss) and the prediction pass, and projects a run of params.yaml's `epochs` (the upper
bound: early stopping can only shorten it). Each row of benchmarks/post_train_time.md is one (size, leads,
device) measurement, replaced when remeasured.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT = REPO / "benchmarks" / "post_train_time.md"
HEADER = ["size", "leads", "rate (Hz)", "parameters", "device", "train records", "batch", "probe pass + fit (s)",
          "step (s)", "epoch (s)", "predictions (s)", "projected run (wall)", "CPU time / wall", "projected run on an idle core", "measured on"]


def measure(size: str, leads: int, records: int, epochs: int, device_name: str) -> dict:
    import torch

    from pipeline.stage_one.backbones.ecgfounder import post_training_net
    from pipeline.stage_one.extract import resolve_device
    from pipeline.stage_two.dataset import TaskData
    from pipeline.stage_two.post_train import post_train
    from pipeline.tasks import Task

    settings = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text())["post_train"])
    shape = settings["sizes"][size]
    planned_epochs = int(settings["epochs"])
    settings["epochs"] = epochs
    task = Task("superclass", "multilabel", "superclass", ("NORM", "MI", "STTC", "CD", "HYP"))
    held = records // 8
    total = records + 2 * held
    rng = np.random.default_rng(0)
    samples = int(round(10 * shape["sampling_rate"]))
    inputs = rng.standard_normal((total, leads, samples), dtype=np.float32)
    rows = np.arange(total)
    data = TaskData(
        task, corpus=None, target=(rng.random((total, 5)) < 0.2).astype(np.float32), subjects=rows.astype(str),
        train=rows[:records], test=rows[records + held :], fold_of_train=np.zeros(records, int), gate=rows[records : records + held],
    )
    torch.manual_seed(0)
    net = post_training_net(leads, 5, float(settings["stochastic_depth"]), float(shape["width"]), float(shape["depth"]))
    parameters = sum(p.numel() for p in net.parameters())
    start, cpu = time.perf_counter(), time.process_time()
    result = post_train(data, net, inputs, rows, settings, resolve_device(device_name), "ecgfounder")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    timings = result.timings
    epoch = timings["fine_tune_s"] / max(len(result.history["train"]), 1)
    predict = wall - timings["probe_s"] - timings["fine_tune_s"]
    return {
        "size": f"{size} (width {shape['width']}, depth {shape['depth']})", "leads": leads, "rate": shape["sampling_rate"],
        "parameters": parameters, "device": device_name, "records": records, "batch": settings["batch_size"],
        "probe_s": timings["probe_s"], "step_s": timings["step_s"], "epoch_s": epoch, "predict_s": predict,
        "projected_s": timings["probe_s"] + planned_epochs * epoch + predict, "planned_epochs": planned_epochs,
        "cpu_share": cpu / wall,  # one torch thread: on an idle core this is ~1 and the wall time shrinks by it
    }


def row(m: dict) -> str:
    load = " ".join(open("/proc/loadavg").read().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    cells = [m["size"], str(m["leads"]), f"{m['rate']:g}", f"{m['parameters'] / 1e6:.2f} M", m["device"], f"{m['records']:,}",
             str(m["batch"]), f"{m['probe_s']:.1f}", f"{m['step_s']:.3f}", f"{m['epoch_s']:.1f}", f"{m['predict_s']:.1f}",
             f"{m['projected_s'] / 60:.1f} min ({m['planned_epochs']} epochs)", f"{m['cpu_share']:.2f}",
             f"{m['projected_s'] * min(m['cpu_share'], 1.0) / 60:.1f} min" if m["device"] == "cpu" else "-",
             f"{os.cpu_count()} CPUs, torch threads 1, load {load}"]
    return "| " + " | ".join(cells) + " |"


def _key(line: str) -> tuple[str, ...]:
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return cells[0], cells[1], cells[2], cells[4]  # size, leads, rate, device


def write(measured: dict) -> None:
    new = row(measured)
    earlier = OUT.read_text().splitlines() if OUT.exists() else []
    kept = [line for line in earlier if line.startswith("| ") and not line.startswith("| size |") and _key(line) != _key(new)]
    lines = [
        "# Post-training: measured time of one run",
        "",
        "Command: `python benchmarks/post_train_time.py --size SIZE --leads N --device DEVICE` (see its docstring). The "
        "real recipe (pipeline.stage_two.post_train) for one epoch on random 10 s records of PTB-XL's shape, 5 labels; "
        "the projection is the probe pass + params.yaml's `epochs` epochs + the prediction pass (early stopping can "
        "only shorten it). Step = one AdamW step on a minibatch (median); epoch = all steps + the held-out loss. "
        "The machine is shared: `CPU time / wall` is the share of a core the run got (torch runs on one thread, "
        "pipeline.stage_two.training.one_thread), and the run on an idle core is the wall-time projection times it.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *sorted(kept + [new]),
    ]
    OUT.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="cpu", help="a size of params.yaml post_train.sizes")
    parser.add_argument("--leads", type=int, default=12, choices=(1, 12))
    parser.add_argument("--records", type=int, default=7758)
    parser.add_argument("--epochs", type=int, default=1, help="epochs to measure (the projection uses params.yaml's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    args = parser.parse_args()
    measured = measure(args.size, args.leads, args.records, args.epochs, args.device)
    write(measured)
    print(OUT.read_text())


if __name__ == "__main__":
    main()
