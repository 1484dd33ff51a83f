"""Stage two on cached embeddings vs. the published EnECG way (frozen backbones inside every training step).

Run from the project root after `dvc repro` (it uses corpus.zarr, checkpoints/ and embeddings/):

    python benchmarks/stage_two_speedup.py --task rr_interval --epochs 5

Both sides train the same heads (EnECG's FFN + LoRA) and the same gate, on the same training rows, with the
same subject-wise folds (a fresh model per fold), epochs and batch size (EnECG's 16), without early stopping.
The EnECG way reads each minibatch's raw signals, runs every backbone's preprocessing and forward pass
(no_grad: they are frozen), then heads, gate and the backward pass, as EnECG's `MoEEnsemble.forward` does.
The cached way trains on embeddings that `enecg extract` computed once; that one-off extraction time is
reported beside the ratio. Output: a table on stdout and benchmarks/stage_two_speedup.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model

from pipeline.stage_one.backbones import build_backbone
from pipeline.stage_two.dataset import load_task_data
from pipeline.ensemble import fit_expert, gate_lead_features
from pipeline.stage_one.extract import backbone_inputs
from pipeline.stores import open_embeddings
from pipeline.stage_two.gate import Gate, combine, fit_gate, gate_input
from pipeline.stage_two.heads import Head, _lora_config
from pipeline.params import load_params
from pipeline.layout import embeddings_path
from pipeline.stage_two.losses import prediction_loss, to_prediction


def cached_way(data, backbones: list[str], heads: dict, gate: dict) -> float:
    """fit-heads for every backbone (k folds) + fit-gate, on the cached embeddings."""
    start = time.perf_counter()
    oof = []
    for name in backbones:
        oof.append(fit_expert(data, open_embeddings(embeddings_path(name), name)["embedding"], heads).oof)
    oof = np.stack(oof, axis=1)
    scale = float(np.std(data.target[data.train])) if data.task.type == "regression" else 1.0
    features = gate_input(gate_lead_features(data.corpus, data.train, gate), oof / scale, False)
    fit_gate(data.task, features, oof, data.target[data.train], data.subjects[data.train], gate, scale)
    return time.perf_counter() - start


def enecg_way(data, backbones: list[str], heads: dict, gate: dict) -> float:
    """EnECG's loop: per fold, a fresh MoE of LoRA heads + gate; every step runs every frozen backbone.

    As in EnECG's data loader, every backbone's input is resampled and preprocessed once, in memory, before
    training (not timed): the steps pay only the backbones' forward passes, which is what caching removes.
    """
    models = {name: build_backbone(name) for name in backbones}
    corpus = data.corpus
    rate, leads = float(corpus.attrs["sampling_rate"]), list(corpus.attrs["leads"])
    rows_all = np.sort(data.train)
    signals_all = corpus["signals"].oindex[rows_all]
    inputs = {name: torch.from_numpy(backbone_inputs(signals_all, rate, leads, models[name])) for name in backbones}
    start = time.perf_counter()
    for _, fit_rows, _ in data.folds():
        torch.manual_seed(0)
        experts = torch.nn.ModuleList()
        for name in backbones:
            head = Head(models[name].config.embedding_dim, data.task.out_dim, int(heads["hidden"]))
            experts.append(get_peft_model(head, _lora_config(heads)))
        gate_features = gate_lead_features(corpus, np.sort(fit_rows), gate)
        moe_gate = Gate(gate_features.shape[1], len(backbones), int(gate["hidden"]))
        parameters = [p for p in experts.parameters() if p.requires_grad] + list(moe_gate.parameters())
        optimiser = torch.optim.AdamW(parameters, lr=float(heads["lr"]))
        rows = np.sort(fit_rows)
        for _ in range(int(heads["epochs"])):
            order = np.random.default_rng(0).permutation(len(rows))
            for batch_start in range(0, len(rows), int(heads["batch_size"])):
                batch = np.sort(order[batch_start : batch_start + int(heads["batch_size"])])
                positions = np.searchsorted(rows_all, rows[batch])
                outputs = []
                for name, expert in zip(backbones, experts):
                    with torch.no_grad():
                        embedding = models[name](inputs[name][positions])["embedding"]
                    outputs.append(to_prediction(data.task, expert(embedding)))
                weights = moe_gate(torch.from_numpy(gate_features[batch]))
                target = torch.from_numpy(data.target[rows[batch]])
                loss = prediction_loss(data.task, combine(weights, torch.stack(outputs, dim=1)), target)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rr_interval")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads for both ways")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/stage_two_speedup.md"))
    args = parser.parse_args()
    params = load_params()
    backbones = list(params["backbones"])
    same = {"epochs": args.epochs, "batch_size": args.batch_size, "val_fraction": 0.0}
    heads, gate = {**params["heads"], **same}, {**params["gate"], **same}
    data = load_task_data(params, args.task)
    torch.set_num_threads(args.threads)
    cached = cached_way(data, backbones, heads, gate)
    published = enecg_way(data, backbones, heads, gate)
    extraction = {name: open_embeddings(embeddings_path(name), name).attrs for name in backbones}
    lines = [
        f"# Stage two: cached embeddings vs. backbones in every step ({args.task}, {args.epochs} epochs)",
        "",
        f"Command: `python benchmarks/stage_two_speedup.py --task {args.task} --epochs {args.epochs} --threads {args.threads}` (after `dvc repro`).",
        f"Backbones: {', '.join(backbones)}; {len(data.train)} training records, {params['split']['k']} folds, batch {args.batch_size}; "
        f"CPU threads: {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end (this run adds about 1).",
        "",
        "| way | seconds |",
        "|---|---|",
        f"| EnECG's (backbones inside every step) | {published:.1f} |",
        f"| cached embeddings (fit-heads + fit-gate) | {cached:.1f} |",
        f"| **speed-up** | **{published / cached:.1f}x** |",
        "",
        "The cached way pays one extraction per backbone once (`enecg extract`, recorded in the stores' attrs: "
        + ", ".join(f"{name} on {attrs.get('device', '?')}" for name, attrs in extraction.items())
        + "); every later change to heads or gate reuses it.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
