"""`extract`: one frozen backbone, once, over the whole corpus -> embeddings/NAME.zarr.

The corpus is read chunk by chunk; each chunk's records are reduced to the backbone's leads, resampled to
its rate, passed through its own preprocessing, and embedded in batches under `torch.inference_mode()`
(bf16 autocast on a GPU). Rows of records that failed QC stay NaN. The store is resumable and is published
only when complete; its attrs record the backbone, input spec, checkpoint sha256 and package version.

Each chunk is one task (`extract_chunk`), run in this process or on a dask.distributed cluster's workers
(params `cluster`, pipeline.cluster): every worker loads the backbone once and keeps it for all its chunks, and
on workers that declare GPUs each task holds one.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import zarr

from pipeline.cluster import gpu_resources, run_chunks
from pipeline.ecg import resample
from pipeline.errors import StoreError
from pipeline.stage_one.backbones import (
    Backbone,
    InputSpec,
    build_backbone,
    checkpoint_sha256,
    default_checkpoint,
)
from pipeline.stores import ChunkedStore, ChunkWriter, create_records_array, open_corpus, provenance


def to_spec(signals: np.ndarray, corpus_rate: float, corpus_leads: list[str], spec: InputSpec) -> np.ndarray:
    """Corpus signals [B, 12, L] -> the spec's leads at the spec's rate, still in millivolts."""
    selected = signals[:, [corpus_leads.index(lead) for lead in spec.leads]]
    return resample(selected, corpus_rate, spec.sampling_rate).astype(np.float32)


def backbone_inputs(signals: np.ndarray, corpus_rate: float, corpus_leads: list[str], backbone: Backbone) -> np.ndarray:
    """Corpus signals [B, 12, L] -> the backbone's preprocessed input [B, len(spec.leads), T]."""
    return backbone.preprocess(to_spec(signals, corpus_rate, corpus_leads, backbone.config.spec)).astype(np.float32)


def resolve_device(device: str) -> torch.device:
    """params `extract.device`: "auto" is CUDA when there is one, else the CPU. `extract` and `predict` both use
    this and `embed_batches`, so a record is embedded with the same device and precision policy (bf16
    autocast on CUDA, float32 on the CPU) whether it came through the corpus or through `enecg predict`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def embed_batches(backbone: Backbone, inputs: np.ndarray, batch_size: int, device: torch.device) -> dict[str, np.ndarray]:
    """Run the frozen backbone over [B, C, T] inputs in batches; outputs as float32 numpy arrays."""
    outputs: dict[str, list[np.ndarray]] = {}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        for start in range(0, len(inputs), batch_size):
            batch = torch.from_numpy(inputs[start : start + batch_size]).to(device)
            for name, value in backbone(batch).items():
                outputs.setdefault(name, []).append(value.float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


@functools.lru_cache(maxsize=1)
def loaded_backbone(name: str, checkpoint: str, sha256: str, device: str) -> tuple[Backbone, torch.device]:
    """The frozen backbone on its device, built once per process: a cluster worker keeps it for every chunk it
    embeds. Keyed by the checkpoint's sha256 too, so a rewritten checkpoint file is never served stale."""
    torch_device = resolve_device(device)
    return build_backbone(name, Path(checkpoint)).to(torch_device), torch_device


def extract_chunk(writer: ChunkWriter, corpus_path: Path, backbone_key: tuple, batch_size: int, index: int, _payload=None) -> None:
    """Chunk `index` of the embedding store: its QC-passed records embedded and written (the others' rows stay
    NaN), then flagged done (nothing, if a killed run's task already flagged it)."""
    group = writer.open()
    if writer.is_done(group, index):
        return
    backbone, device = loaded_backbone(*backbone_key)
    corpus = open_corpus(corpus_path)
    rows = writer.rows(index)
    keep = np.flatnonzero(corpus["qc_ok"][rows])
    if len(keep):
        signals = corpus["signals"][rows][keep]
        inputs = backbone_inputs(signals, float(corpus.attrs["sampling_rate"]), list(corpus.attrs["leads"]), backbone)
        for output, value in embed_batches(backbone, inputs, batch_size, device).items():
            block = np.full((rows.stop - rows.start, *value.shape[1:]), np.nan, dtype=np.float32)
            block[keep] = value
            group[output][rows] = block
    writer.mark_done(group, index)


def extract_embeddings(
    name: str,
    corpus_path: Path,
    out: Path,
    checkpoint: Path | None = None,
    batch_size: int = 32,
    chunk_records: int = 256,
    device: str = "auto",
    stop_after_chunks: int | None = None,
    client=None,
) -> dict:
    """Write embeddings/NAME.zarr; returns a summary. `client`: a dask.distributed Client whose workers embed the
    chunks (pipeline.cluster), or None for this process. `stop_after_chunks` simulates a kill (tests, benchmarks)."""
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint(name)
    backbone_key = (name, str(checkpoint.resolve()), checkpoint_sha256(checkpoint), device)
    backbone, torch_device = loaded_backbone(*backbone_key)
    config = backbone.config  # the registered config, or one sized by the checkpoint (a user's own DLinear/TimesNet)

    corpus = open_corpus(corpus_path)
    count = corpus["signals"].shape[0]
    corpus_rate = float(corpus.attrs["sampling_rate"])
    corpus_leads = list(corpus.attrs["leads"])
    qc_ok = corpus["qc_ok"][:]
    fingerprint = {
        "backbone": name,
        "spec": config.spec.as_dict(),
        "checkpoint_sha256": backbone_key[2],
        "checkpoint_config": getattr(backbone, "checkpoint_config", None) or {},  # settings no tensor determines
        "corpus": corpus.attrs["provenance"],
    }
    store = ChunkedStore(out, fingerprint, count, chunk_records)

    # Native output names and sizes are learnt from one forward pass on a zero batch.
    probe = embed_batches(backbone, backbone_inputs(np.zeros((1, *corpus["signals"].shape[1:]), np.float32), corpus_rate, corpus_leads, backbone), 1, torch_device)
    if probe["embedding"].shape[1] != config.embedding_dim:
        raise StoreError(f"backbone {name} returned {probe['embedding'].shape[1]} dims, its config says {config.embedding_dim}")

    def create(group: zarr.Group) -> None:
        for output, value in probe.items():
            create_records_array(group, output, (count, *value.shape[1:]), chunk_records, "float32", float("nan"))

    store.open(create)
    pending = store.pending()
    work = functools.partial(extract_chunk, store.writer, Path(corpus_path).resolve(), backbone_key, batch_size)
    finished = run_chunks(client, f"extract {name}", pending, work, lambda index: 1, store.n_chunks, completed=store.n_chunks - len(pending),
                          resources=gpu_resources(client) if client is not None else None, stop_after=stop_after_chunks)
    if not finished:
        return {"backbone": name, "stopped_after_chunks": stop_after_chunks}
    store.finish(
        {
            "backbone": name,
            "spec": config.spec.as_dict(),
            "embedding_dim": config.embedding_dim,
            "outputs": sorted(probe),
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": fingerprint["checkpoint_sha256"],
            "device": str(torch_device),
            "provenance": provenance(**fingerprint),
        }
    )
    return {"backbone": name, "records": count, "embedded": int(qc_ok.sum()), "resumed_chunks": store.resumed_chunks}
