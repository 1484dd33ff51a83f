"""Parameter count and extraction throughput of every registered backbone at its FULL published size.

    nice -n 15 python benchmarks/throughput.py                          # every backbone, CPU -> throughput.md
    python benchmarks/throughput.py --backbones moment-large --batch-size 8 --warmup-size 2
    python benchmarks/throughput.py --device cuda --bf16                # the same on a GPU, bf16 autocast

No published weights are available here, so every backbone gets a checkpoint with random weights, written at
full size IN ITS NATIVE FORMAT into a temporary folder, and is loaded through the project's own
`build_backbone(name, path)`: the load path timed here is the one `enecg extract` takes. The checkpoints are
made the way each backbone's tests make them:

- minirocket, dlinear, timesnet: the backbone's registered pretrainer, run briefly on a few simulated records
  (what `enecg pretrain` writes; the fitted values do not change the cost of the forward pass);
- ecgfm(-finetuned), ecgfounder(-1lead), tempo: the published key list (shared fixtures' keys_full.json) filled
  with random tensors, in the published container (fairseq-signals dict, ECGFounder training dict, bare
  state_dict);
- hubert-ecg-*, moment-*: a Hugging Face folder (config.json + model.safetensors) whose config is the published
  full one and whose keys are those of transformers' own HubertModel / T5 encoder (built on the meta device)
  plus the hand-named heads, as the published files hold them.

What is timed, per backbone: a batch of 10 s 12-lead 500 Hz records (simulated ECGs, as in the demo
corpus) goes through `pipeline.stage_one.extract.backbone_inputs` (lead selection, resampling to the backbone's rate, its
own numpy preprocessing: "preprocess") and then through the backbone under `torch.inference_mode()`, the output
copied back to the host as `extract` does ("forward"). One smaller warm-up batch runs first (lazy allocations,
oneDNN kernel choice), then `--batches` timed batches; a smaller warm-up keeps the largest models affordable and
is enough (with `--batches 3` on ecgfounder, minirocket and timesnet the later batches were no faster than the
first). Throughput is records / (preprocess + forward). `--bf16` wraps the forward in bf16 autocast, as
`extract` does on a GPU (`extract` always uses it there; without `--bf16` a GPU run measures float32).

Results are kept in throughput.md (the machine-readable copy in an HTML comment at its end), so a rerun with
`--backbones` replaces only those rows; rows measured on another machine (CPU model, core count, torch version)
are dropped rather than mixed in.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import transformers
from transformers import HubertConfig, HubertModel, T5Config, T5EncoderModel

from pipeline.stage_one.backbones import LEADS_12, build_backbone, get_config, get_pretrainer, list_backbones
from pipeline.stage_one.demo import SAMPLING_RATE, SECONDS, simulate_record
from pipeline.stage_one.extract import backbone_inputs, to_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.shared_dir import FIXTURES  # noqa: E402  ($ENECG_SHARED, else ../shared)
OUT = Path(__file__).with_name("throughput.md")
RESULTS_TAG = "throughput-results"
# MOMENT-1-small/-base are MOMENT-1-large's config on flan-t5-small/-base (only -large's config.json is in the
# fixtures); -base built so holds 113,481,608 elements, the published file's count (fixtures/moment/keys_full.json).
MOMENT_T5 = {
    "small": {"d_model": 512, "d_ff": 1024, "d_kv": 64, "num_heads": 6, "num_layers": 8, "num_decoder_layers": 8},
    "base": {"d_model": 768, "d_ff": 2048, "d_kv": 64, "num_heads": 12, "num_layers": 12, "num_decoder_layers": 12},
    "large": {},
}
# The briefest pretraining that still writes a real checkpoint: one epoch over a few series.
PRETRAIN_SETTINGS = {
    "minirocket": {},
    "dlinear": {"epochs": 1, "max_shift": 1, "eval_windows": 16, "device": "cpu"},
    "timesnet": {"epochs": 1, "max_shift": 1, "eval_windows": 16, "device": "cpu"},
}


# ---------------------------------------------------------------------------------------------------------------
# Full-size checkpoints with random weights, in each backbone's native format


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """N(0, 0.02) float32 tensors of the given shapes; 0-d entries (BatchNorm's num_batches_tracked) are int64.

    The values do not change the cost of these dense networks (no data-dependent control flow), only the
    magnitudes must stay far from float32's denormals, which N(0, 0.02) does.
    """
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.tensor(0) if len(shape) == 0 else torch.randn(shape, generator=generator) * 0.02
        for key, shape in shapes.items()
    }


def published_shapes(fixture: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a published checkpoint, from fixtures/<fixture>/keys_full.json (a dict, or a list of entries)."""
    keys = json.loads((FIXTURES / fixture / "keys_full.json").read_text())["keys"]
    if isinstance(keys, dict):
        return {key: tuple(shape) for key, shape in keys.items()}
    return {entry["key"]: tuple(entry["shape"]) for entry in keys}


def full_config(fixture: str) -> dict:
    return json.loads((FIXTURES / fixture / "config.json").read_text())["full"]


def write_pretrained(name: str, path: Path, corpus: np.ndarray) -> None:
    """`enecg pretrain`'s own checkpoint, fitted on the simulated records at the backbone's input spec."""
    signals = to_spec(corpus, SAMPLING_RATE, list(LEADS_12), get_config(name).spec)
    get_pretrainer(name)(signals, path, PRETRAIN_SETTINGS[name], 0)


def write_ecgfm(name: str, path: Path) -> None:
    """fairseq-signals' Trainer.save_checkpoint dict: cfg['model'] sizes the model, 'model' is the state dict."""
    fixture = "ecgfm-pretrained" if name == "ecgfm" else "ecgfm-finetuned"
    checkpoint = {
        "args": None,
        "cfg": {"_name": None, "model": full_config(fixture)["model"]},
        "model": random_state(published_shapes(fixture)),
        "criterion": None,
        "optimizer_history": [],
        "task_state": {},
        "extra_state": {},
        "last_optimizer_state": None,
    }
    torch.save(checkpoint, path)


def write_ecgfounder(name: str, path: Path) -> None:
    """The released training dict; the Adam state is left empty (the loader ignores it, and it would triple
    the file), `val_auroc` is a numpy float64 as in the released files."""
    fixture = "ecgfounder-12lead" if name == "ecgfounder" else "ecgfounder-1lead"
    checkpoint = {
        "epoch": 0,
        "step": 0,
        "state_dict": random_state(published_shapes(fixture)),
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": {},
        "val_auroc": np.float64(0.5),
    }
    torch.save(checkpoint, path)


def write_tempo(name: str, path: Path) -> None:
    """TEMPO-80M_v1.pth is a bare state_dict."""
    torch.save(random_state(published_shapes("tempo")), path)


def write_hf_folder(folder: Path, config: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    safetensors.torch.save_file(random_state(shapes), folder / "model.safetensors")


def write_hubert(name: str, folder: Path) -> None:
    """HuBERTECG.save_pretrained's folder: transformers' HubertModel keys plus the pretraining heads."""
    config = full_config("hubert-ecg")[name.rsplit("-", 1)[1]]
    with torch.device("meta"):
        model = HubertModel(HubertConfig.from_dict(config))
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    projection, hidden = config["classifier_proj_size"], config["hidden_size"]
    for index, vocabulary in enumerate(config["vocab_sizes"]):
        shapes[f"final_proj.{index}.weight"] = (projection, hidden)
        shapes[f"final_proj.{index}.bias"] = (projection,)
        shapes[f"label_embedding.{index}.weight"] = (vocabulary, projection)
    write_hf_folder(folder, config, shapes)


def write_moment(name: str, folder: Path) -> None:
    """MOMENTPipeline.save_pretrained's folder: the T5 encoder stack as encoder.*, the patch embedding and head."""
    size = name.rsplit("-", 1)[1]
    config = full_config("moment")["config_json"]
    config = {**config, "t5_config": {**config["t5_config"], **MOMENT_T5[size]}}
    config["transformer_backbone"] = f"google/flan-t5-{size}"
    with torch.device("meta"):
        encoder = T5EncoderModel(T5Config.from_dict(dict(config["t5_config"]))).encoder
    width, patch = config["t5_config"]["d_model"], config["patch_len"]
    shapes = {f"encoder.{key}": tuple(value.shape) for key, value in encoder.state_dict().items()}
    shapes |= {
        "patch_embedding.value_embedding.weight": (width, patch),
        "patch_embedding.mask_embedding": (width,),
        "patch_embedding.position_embedding.pe": (1, 5000, width),
        "head.linear.weight": (patch, width),
        "head.linear.bias": (patch,),
    }
    write_hf_folder(folder, config, shapes)


def write_checkpoint(name: str, folder: Path, corpus: np.ndarray) -> Path:
    """A full-size random checkpoint for `name` under its published file name in `folder`; returns its path."""
    path = folder / get_config(name).checkpoint_file
    if get_config(name).pretrainable:
        write_pretrained(name, path, corpus)
    elif name.startswith("ecgfm"):
        write_ecgfm(name, path)
    elif name.startswith("ecgfounder"):
        write_ecgfounder(name, path)
    elif name == "tempo":
        write_tempo(name, path)
    elif name.startswith("hubert-ecg-"):
        write_hubert(name, path)
    elif name.startswith("moment-"):
        write_moment(name, path)
    else:
        raise SystemExit(f"no checkpoint writer for backbone {name!r}: add one to {__file__}")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Measurement


def simulated_corpus(records: int, distinct: int = 8) -> np.ndarray:
    """[records, 12, 5000] float32 millivolts: `distinct` simulated ECGs (varied rate and rhythm), repeated."""
    simulated = [simulate_record(50 + 10 * i, i % 2 == 1, seed=i)[0].T for i in range(distinct)]
    return np.stack([simulated[i % distinct] for i in range(records)]).astype(np.float32)


def size_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def measure(name: str, corpus: np.ndarray, args: argparse.Namespace, device: torch.device) -> dict:
    """Write, load and time one backbone; the row of the results table."""
    batch_size, warmup_size = args.batch_size, min(args.warmup_size, args.batch_size)
    with tempfile.TemporaryDirectory(prefix=f"throughput-{name}-") as folder:
        start = time.perf_counter()
        path = write_checkpoint(name, Path(folder), corpus)
        written = time.perf_counter() - start
        checkpoint_bytes = size_on_disk(path)
        start = time.perf_counter()
        backbone = build_backbone(name, path).to(device)
        loaded = time.perf_counter() - start

    def run(signals: np.ndarray) -> tuple[float, float, torch.Tensor]:
        start = time.perf_counter()
        inputs = backbone_inputs(signals, SAMPLING_RATE, list(LEADS_12), backbone)
        middle = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            outputs = {key: value.float().cpu() for key, value in backbone(torch.from_numpy(inputs).to(device)).items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        return middle - start, time.perf_counter() - middle, outputs["embedding"]

    load_before = os.getloadavg()[0]
    run(corpus[:warmup_size])
    timings = [run(corpus[:batch_size]) for _ in range(args.batches)]
    embedding = timings[-1][2]
    if embedding.shape != (batch_size, get_config(name).embedding_dim) or not torch.isfinite(embedding).all():
        finite = bool(torch.isfinite(embedding).all())
        raise RuntimeError(f"{name}: embedding {tuple(embedding.shape)} (finite: {finite}), expected {batch_size} rows")
    preprocess = sum(t[0] for t in timings) / len(timings)
    forward = sum(t[1] for t in timings) / len(timings)
    return {
        "backbone": name,
        "parameters": sum(p.numel() for p in backbone.parameters()),
        "buffers": sum(b.numel() for b in backbone.buffers()),
        "checkpoint_mb": checkpoint_bytes / 1e6,
        "write_s": written,
        "load_s": loaded,
        "batch_size": batch_size,
        "warmup_size": warmup_size,
        "batches": args.batches,
        "preprocess_s": preprocess,
        "forward_s": forward,
        "ecgs_per_s": batch_size / (preprocess + forward),
        "forward_ecgs_per_s": batch_size / forward,
        "forward_s_each": [round(t[1], 3) for t in timings],
        "threads": torch.get_num_threads(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    """What the numbers depend on; rows are only merged between runs on the same machine."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        found = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = found[1].strip() if found else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def read_results(path: Path) -> dict:
    """The results embedded in a previous throughput.md, or an empty set."""
    if not path.exists():
        return {}
    found = re.search(rf"<!-- {RESULTS_TAG}\n(.*?)\n-->", path.read_text(), re.S)
    return json.loads(found[1]) if found else {}


def megabytes(value: float) -> str:
    return f"{value:.1f} MB" if value >= 1 else f"{value * 1000:.0f} kB"


def backbone_order(name: str) -> str:
    """Registry names, with model sizes in size order (small, base, large) rather than alphabetical."""
    return re.sub(r"-(small|base|large)$", lambda size: "-" + "123"["small base large".split().index(size[1])], name)


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| backbone | parameters | buffers | checkpoint | batch | preprocess s/batch | forward s/batch "
        "| ECGs/s | forward-only ECGs/s | load s | threads | load avg (before, after) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['backbone']} | failed: {row['error']} |" + " |" * 10)
            continue
        reduced = " **reduced**" if row["batch_size"] != 32 else ""
        batch = f"{row['batch_size']}{reduced} (x{row['batches']}, warm-up {row['warmup_size']})"
        lines.append(
            f"| {row['backbone']} | {row['parameters']:,} | {row['buffers']:,} | {megabytes(row['checkpoint_mb'])} "
            f"| {batch} | {row['preprocess_s']:.3g} | {row['forward_s']:.3g} | {row['ecgs_per_s']:.3g} "
            f"| {row['forward_ecgs_per_s']:.3g} | {row['load_s']:.1f} | {row['threads']} "
            f"| {row['load_average'][0]}, {row['load_average'][1]} |"
        )
    return lines


def write_report(path: Path, results: dict) -> None:
    info = results["machine"]
    lines = [
        "# Backbone extraction throughput (full published sizes, random weights)",
        "",
        "Command: `nice -n 15 python benchmarks/throughput.py` (the script's docstring says how the full-size",
        "checkpoints are made and what is timed; `--backbones NAME...`, `--batch-size`, `--device cuda --bf16`).",
        "Each backbone loads a full-size random-weight checkpoint in its native format through `build_backbone`;",
        "10 s 12-lead 500 Hz simulated records go through `pipeline.stage_one.extract.backbone_inputs` (preprocess: leads,",
        "resampling, the model's own numpy preprocessing) and the frozen forward under `torch.inference_mode`",
        "(forward). ECGs/s = batch / (preprocess + forward), after one smaller warm-up batch. Parameters count the",
        "loaded module's `nn.Parameter`s (MiniRocket's fitted kernels and biases are buffers); checkpoint is the",
        "size of the written file or folder.",
        "",
        f"Machine: {info['cpu']}, nproc {info['nproc']}, GPU {info['gpu'] or 'none'}; torch {info['torch']}, "
        f"transformers {info['transformers']}, numpy {info['numpy']}, Python {info['python']}.",
        "The machine is shared with other work: the last column is the 1-minute load average before and after the",
        "backbone's warm-up and timed batches (above nproc, other processes were competing for the cores), so",
        "throughputs are indicative lower bounds; repeated runs under such load can differ by up to ~2x.",
    ]
    for setting, rows in sorted(results["settings"].items()):
        ordered = sorted(rows.values(), key=lambda row: backbone_order(row["backbone"]))
        lines += ["", f"## {setting}", "", *table(ordered)]
        if any(row.get("batch_size", 32) != 32 for row in rows.values()):
            lines += ["", "**reduced**: a smaller timed batch than 32 (`--batch-size`), to keep that backbone's run "
                      "under ~10 minutes on this machine; ECGs/s is still per record."]
    lines += ["", f"<!-- {RESULTS_TAG}", json.dumps(results, indent=1, sort_keys=True), "-->", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=None, help="names to measure (default: every registered one)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast around the forward (extract's GPU setting)")
    parser.add_argument("--batch-size", type=int, default=32, help="records per timed batch (default 32)")
    parser.add_argument("--warmup-size", type=int, default=4, help="records in the untimed warm-up batch (default 4)")
    parser.add_argument("--batches", type=int, default=1, help="timed batches, averaged (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"report to write/update (default {OUT.name})")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.backbones or sorted((config.name for config in list_backbones()), key=backbone_order)
    for name in names:
        get_config(name)  # an unknown name fails now, not after an hour of measuring

    info = machine()
    results = read_results(args.out)
    if results.get("machine") != info:
        results = {"machine": info, "settings": {}}
    setting = f"{device.type}, {'bf16 autocast' if args.bf16 else 'float32'}"
    rows = results["settings"].setdefault(setting, {})
    corpus = simulated_corpus(max(args.batch_size, args.warmup_size))
    assert corpus.shape[1:] == (len(LEADS_12), SAMPLING_RATE * SECONDS)
    print(f"{setting}, torch threads {torch.get_num_threads()}, nproc {info['nproc']}", flush=True)
    for name in names:
        start = time.perf_counter()
        try:
            rows[name] = measure(name, corpus, args, device)
        except Exception as error:  # one broken backbone must not cost the others' measurements
            rows[name] = {"backbone": name, "error": f"{type(error).__name__}: {error}".replace("\n", " ")[:300]}
        print(f"{name}: {json.dumps(rows[name])} ({time.perf_counter() - start:.0f} s in all)", flush=True)
        write_report(args.out, results)  # after every backbone, so a long run keeps what it has measured


if __name__ == "__main__":
    sys.exit(main())
