"""Killed jobs, atomic artifacts and checkpoint safety, through the real `enecg` command in a subprocess.

A `kill -9` is delivered at a chosen point (the `KILLER` wrapper SIGKILLs the process when a function is
entered for the n-th time, e.g. before chunk n's `done` flag is written, or between two fold heads being
saved) and at a random moment (an external `kill -9`). The rerun must give stores byte-identical to an
uninterrupted run, must not rewrite completed chunks (their chunk files keep their inode and mtime), and
a later stage must never find a half-written artifact.

Subprocesses run with one torch thread, like the in-process reference runs (tests/conftest.py), so that
float reductions happen in the same order and results can be compared bit for bit.
"""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb
import yaml

from pipeline.errors import CheckpointError, StoreError
from pipeline.layout import head_dir
from pipeline.manifests import write_tasks
from pipeline.stage_one.backbones import LEADS_12, build_backbone, checkpoint_sha256
from pipeline.stage_one.backbones.dlinear import DLinear
from pipeline.stage_one.corpus import prepare_corpus
from pipeline.stage_one.demo import TASKS as DEMO_TASKS
from pipeline.stage_one.extract import extract_embeddings
from pipeline.stage_one.signals import QCSettings
from pipeline.stores import open_complete

pytestmark = pytest.mark.slow  # subprocesses: each `enecg` start imports torch and scipy (seconds)
ROOT = Path(__file__).resolve().parents[1]
ENECG = Path(sys.executable).with_name("enecg")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "1234"}
KILLER = """
import importlib, os, signal, sys
target, calls, match, *command = sys.argv[1:]
module, _, attribute = target.partition(":")
owner = importlib.import_module(module)
*parents, name = attribute.split(".")
for parent in parents:
    owner = getattr(owner, parent)
original, entered = getattr(owner, name), []
def wrapper(*args, **kwargs):
    if match in repr(args):
        if len(entered) == int(calls):
            os.kill(os.getpid(), signal.SIGKILL)
        entered.append(1)
    return original(*args, **kwargs)
setattr(owner, name, wrapper)
from pipeline.cli import app
app(command, prog_name="enecg")
"""


def ecg_like(heart_rate: float, seed: int, fs: int = 500, seconds: float = 10.0) -> np.ndarray:
    """[T, 12] mV: R-wave-like pulses at the heart rate with lead-specific gains, plus noise (cheap, unlike the demo)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(fs * seconds)) / fs
    beats = np.cumsum(rng.normal(60 / heart_rate, 0.01, int(seconds * heart_rate / 60) + 2))
    pulse = np.exp(-((t[:, None] - beats[None]) ** 2) / (2 * 0.012**2)).sum(axis=1)
    return pulse[:, None] * rng.uniform(0.3, 1.5, 12) + rng.normal(0, 0.02, (len(t), 12))


def make_project(folder: Path, subjects: int = 12, records_per_subject: int = 4) -> dict:
    """A project folder: WFDB records, their manifest, params.yaml (small chunks) and a DLinear checkpoint."""
    data = folder / "data"
    data.mkdir(parents=True)
    rows = []
    for subject in range(subjects):
        for index in range(records_per_subject):
            name, rate = f"s{subject:02d}r{index}", 50 + 6 * subject + index
            wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=list(LEADS_12), p_signal=ecg_like(rate, 10 * subject + index),
                        fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(data))
            rows.append({"record_id": name, "subject_id": f"p{subject}", "path": name, "rr_interval": 60000 / rate,
                         "irregular": index % 2, "rate_class": "brady" if rate < 60 else "tachy" if rate > 100 else "normal"})
    (data / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    write_tasks(DEMO_TASKS, data / "manifest.jsonl")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] = {"manifest": "data/manifest.jsonl", "root": "data", "tasks": "data/manifest.tasks.yaml"}
    params["prepare"].update(chunk_records=8, workers=1)
    params["pretrain"]["minirocket"].update(max_records=64, max_fit_records=64)
    params["extract"]["chunk_records"] = 8
    params["heads"]["epochs"] = params["gate"]["epochs"] = 20
    params["evaluate"]["bootstrap"] = 100
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    params["task_definitions"] = DEMO_TASKS  # as load_params gives it to the stages
    torch.manual_seed(0)
    checkpoint = folder / "checkpoints" / "dlinear" / "checkpoint.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save(DLinear().state_dict(), checkpoint)  # EnECG's format: a bare state_dict
    return params


def qc_settings(params: dict) -> QCSettings:
    """As stages/prepare.py builds them (types included: they are part of the store's fingerprint)."""
    prepare = params["prepare"]
    return QCSettings(int(prepare["sampling_rate"]), float(prepare["seconds"]), float(prepare["min_seconds"]), float(prepare["flat_threshold_mv"]))


def prepare_in_process(params: dict, out: Path) -> dict:
    """What `enecg prepare` does, uninterrupted, into `out` (run from the project folder)."""
    prepare = params["prepare"]
    return prepare_corpus(Path(params["data"]["manifest"]), Path(params["data"]["root"]), out, qc_settings(params),
                          chunk_records=prepare["chunk_records"], workers=prepare["workers"], scheduler=prepare["scheduler"])


def enecg(folder: Path, *args: str, kill_at: tuple | None = None) -> subprocess.CompletedProcess:
    """Run `enecg ARGS` in `folder`; with `kill_at=(function, n[, text])`, SIGKILL it when `function` is entered
    the (n+1)-th time (counting only calls whose arguments' repr contains `text`)."""
    if kill_at is None:
        command = [str(ENECG), *args]
    else:
        function, calls, match = (*kill_at, "")[:3]
        command = [sys.executable, "-c", KILLER, function, str(calls), match, *args]
    result = subprocess.run(command, cwd=folder, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == (-signal.SIGKILL if kill_at else 0), result.stdout[-3000:] + result.stderr[-3000:]
    return result


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` by relative name, with its bytes."""
    return {str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*")) if file.is_file()}


def artifact(path: Path) -> dict[str, object]:
    """`tree`, except that peft's adapter_config.json is compared as JSON with `target_modules` sorted.

    peft keeps target_modules as a set and writes it in hash order, which differs between processes
    (PYTHONHASHSEED); heads._lora_config could pass them as one regex string to make the file byte-stable.
    """
    files: dict[str, object] = dict(tree(path))
    for name, content in files.items():
        if name.endswith("adapter_config.json"):
            config = json.loads(content)
            files[name] = {**config, "target_modules": sorted(config["target_modules"])}
    return files


def identity(path: Path) -> tuple[int, int]:
    """A file's inode and mtime: Zarr writes a chunk to a temporary file and renames it, so both change on a rewrite."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project with an uninterrupted reference corpus (in-process) under reference/."""
    folder = tmp_path_factory.mktemp("project")
    params = make_project(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        prepare_in_process(params, Path("reference/corpus.zarr"))
    return folder, params


def ensure_corpus(folder: Path) -> Path:
    """corpus.zarr in place: a copy of the reference (byte-identical to what `enecg prepare` writes, tested below)."""
    if not (folder / "corpus.zarr").exists():
        shutil.copytree(folder / "reference" / "corpus.zarr", folder / "corpus.zarr")
    return folder / "corpus.zarr"


def signals_chunk(store: Path, index: int) -> Path:
    return store / "signals" / "c" / str(index) / "0" / "0"


DONE_FLAG = ("pipeline.stores:ChunkWriter.mark_done", 2)  # chunks 0-1 ticked; chunk 2 written, its flag not
TORN_WRITE = ("pathlib:Path.replace", 0, "signals/c/2/0/0')")  # inside Zarr's write: temporary written, not renamed


@pytest.mark.parametrize("kill_at", [DONE_FLAG, TORN_WRITE], ids=["before-done-flag", "inside-chunk-write"])
def test_prepare_killed_mid_chunk_resumes_to_the_same_bytes(project, kill_at):
    folder, _ = project
    shutil.rmtree(folder / "corpus.zarr", ignore_errors=True)
    enecg(folder, "prepare", kill_at=kill_at)
    partial = folder / "corpus.zarr.partial"
    assert not (folder / "corpus.zarr").exists() and partial.exists()
    with pytest.raises(StoreError, match="partial store from an interrupted run exists; rerun to resume"):
        open_complete(folder / "corpus.zarr", "enecg prepare")  # what a later stage gets meanwhile
    torn = list(partial.rglob("*.partial"))
    assert len(torn) == (kill_at == TORN_WRITE)
    completed = {index: identity(signals_chunk(partial, index)) for index in range(2)}
    enecg(folder, "prepare")
    corpus = folder / "corpus.zarr"
    assert tree(corpus) == tree(folder / "reference" / "corpus.zarr")  # the torn temporary is gone too
    assert all(identity(signals_chunk(corpus, index)) == completed[index] for index in range(2))  # not rewritten
    assert not partial.exists()


def kill_at_random(folder: Path, command: list[str], partial: Path, within: float, env: dict = ENV) -> tuple[float, bool]:
    """Start `enecg COMMAND`, `kill -9` it a random 0..`within` s after its partial store appears.

    Returns the delay and whether the kill landed before the run finished."""
    delay = random.uniform(0.0, within)
    process = subprocess.Popen([str(ENECG), *command], cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not partial.exists() and process.poll() is None:
        time.sleep(0.002)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    return delay, process.wait() == -signal.SIGKILL


def test_prepare_killed_at_a_random_moment_resumes_to_the_same_bytes(project):
    folder, _ = project
    within = 0.4
    for _ in range(4):  # a kill after the run finished proves nothing: draw again, sooner
        shutil.rmtree(folder / "corpus.zarr", ignore_errors=True)
        delay, landed = kill_at_random(folder, ["prepare"], folder / "corpus.zarr.partial", within)
        if landed:
            break
        within /= 2
    assert landed, "prepare always finished before the kill"
    enecg(folder, "prepare")
    assert tree(folder / "corpus.zarr") == tree(folder / "reference" / "corpus.zarr"), f"killed {delay:.3f} s after the partial store appeared"


def test_changed_inputs_discard_a_partial_store_instead_of_mixing(project, monkeypatch):
    folder, params = project
    shutil.rmtree(folder / "corpus.zarr", ignore_errors=True)
    enecg(folder, "prepare", kill_at=DONE_FLAG)
    kept = identity(signals_chunk(folder / "corpus.zarr.partial", 0))
    monkeypatch.chdir(folder)
    summary = prepare_in_process({**params, "prepare": {**params["prepare"], "flat_threshold_mv": 0.02}}, Path("corpus.zarr"))
    assert summary["resumed_chunks"] == 0  # started over
    assert identity(signals_chunk(folder / "corpus.zarr", 0)) != kept
    assert open_complete(folder / "corpus.zarr", "prepare").attrs["fingerprint"]["qc"]["flat_threshold_mv"] == 0.02
    shutil.rmtree(folder / "corpus.zarr")
    ensure_corpus(folder)


@pytest.fixture(scope="module")
def reference_embeddings(project):
    folder, _ = project
    ensure_corpus(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        extract_embeddings("dlinear", Path("corpus.zarr"), Path("reference/dlinear.zarr"), chunk_records=8)
    return folder / "reference" / "dlinear.zarr"


def test_extract_killed_mid_chunk_resumes_to_the_same_bytes(project, reference_embeddings):
    folder, _ = project
    enecg(folder, "extract", "-m", "dlinear", kill_at=DONE_FLAG)
    partial = folder / "embeddings" / "dlinear.zarr.partial"
    written = {chunk: identity(partial / "embedding" / "c" / str(chunk) / "0") for chunk in range(3)}
    rerun = enecg(folder, "extract", "-m", "dlinear")
    assert "'resumed_chunks': 2" in rerun.stdout + rerun.stderr
    store = folder / "embeddings" / "dlinear.zarr"
    assert tree(store) == tree(reference_embeddings)
    assert [identity(store / "embedding" / "c" / str(chunk) / "0") == written[chunk] for chunk in range(3)] == [True, True, False]


def test_a_changed_checkpoint_forces_re_extraction(project, tmp_path, monkeypatch):
    folder, _ = project
    ensure_corpus(folder)
    monkeypatch.chdir(folder)
    old = folder / "checkpoints" / "dlinear" / "checkpoint.pth"
    new = tmp_path / "checkpoint.pth"
    torch.manual_seed(1)
    torch.save(DLinear().state_dict(), new)
    out = tmp_path / "dlinear.zarr"
    assert extract_embeddings("dlinear", Path("corpus.zarr"), out, checkpoint=old, chunk_records=8, stop_after_chunks=3) == {"backbone": "dlinear", "stopped_after_chunks": 3}
    summary = extract_embeddings("dlinear", Path("corpus.zarr"), out, checkpoint=new, chunk_records=8)
    assert summary["resumed_chunks"] == 0  # the partial store of the old checkpoint was discarded, not extended
    fresh = tmp_path / "fresh.zarr"
    extract_embeddings("dlinear", Path("corpus.zarr"), fresh, checkpoint=new, chunk_records=8)
    store = open_complete(out, "extract")
    assert np.array_equal(store["embedding"][:], open_complete(fresh, "extract")["embedding"][:])
    assert store.attrs["checkpoint_sha256"] == checkpoint_sha256(new) != checkpoint_sha256(old)
    assert store.attrs["provenance"]["checkpoint_sha256"] == store.attrs["checkpoint_sha256"]


def test_an_unsafe_checkpoint_is_refused_not_unpickled(tmp_path):
    unsafe = tmp_path / "checkpoint.pth"
    torch.save({"state": DLinear().state_dict(), "callback": Path("x")}, unsafe)  # a pickled class: code could run
    with pytest.raises(CheckpointError, match=r"(?s)cannot read checkpoint .*checkpoint\.pth.*Unsupported global"):
        build_backbone("dlinear", unsafe)


def test_every_torch_load_uses_weights_only():
    """Source check: each torch.load in the project passes weights_only=True (load_torch_file is the one place)."""
    calls = []
    for source in [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "stages").rglob("*.py")]:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords)
                    calls.append((str(source.relative_to(ROOT)), node.lineno, safe))
    assert calls and all(safe for _, _, safe in calls), calls


def test_killed_fit_heads_never_leaves_a_half_written_head(project, reference_embeddings, monkeypatch):
    folder, params = project
    ensure_corpus(folder)
    monkeypatch.chdir(folder)
    (folder / "embeddings").mkdir(exist_ok=True)
    if not (folder / "embeddings" / "dlinear.zarr").exists():
        shutil.copytree(reference_embeddings, folder / "embeddings" / "dlinear.zarr")
    from stages import fit_gate, fit_heads

    fit_heads.run(params, "rr_interval", "dlinear")
    heads = folder / head_dir("rr_interval", "dlinear")
    finished = artifact(heads)
    # Killed while saving: fold 0's files are written into the temporary folder, fold 1's are not.
    enecg(folder, "fit-heads", "-t", "rr_interval", "-m", "dlinear", kill_at=("pipeline.stage_two.experts:save_head", 1))
    leftovers = list(heads.parent.glob(".rr_interval.tmp-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "fold0").exists() and not (leftovers[0] / "fold1").exists()
    assert artifact(heads) == finished  # the previous complete head is untouched
    shutil.rmtree(heads)
    enecg(folder, "fit-heads", "-t", "rr_interval", "-m", "dlinear", kill_at=("pipeline.stage_two.experts:save_head", 1))
    assert not heads.exists()  # no head rather than half a head
    with pytest.raises(StoreError, match=r"heads/dlinear/rr_interval/predictions\.npz does not exist; run `enecg fit-heads"):
        fit_gate.run({**params, "backbones": ["dlinear"]}, "rr_interval")
    enecg(folder, "fit-heads", "-t", "rr_interval", "-m", "dlinear")
    assert artifact(heads) == finished  # the rerun equals the uninterrupted fit, bit for bit
    assert list(heads.parent.iterdir()) == [heads]  # the killed runs' temporaries are gone
