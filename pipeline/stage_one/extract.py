"""`extract`: one frozen backbone, once, over the whole corpus -> embeddings/NAME.zarr.

The corpus is read chunk by chunk; each chunk's records are reduced to the backbone's leads, resampled to
its rate, passed through its own preprocessing, and embedded in batches under `torch.inference_mode()`
(bf16 autocast on a GPU). Rows of records that failed QC stay NaN. The store is resumable and is published
only when complete; its attrs record the backbone, input spec, checkpoint sha256 and package version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr

from pipeline.ecg import resample
from pipeline.errors import StoreError
from pipeline.progress import progress_bar
from pipeline.stage_one.backbones import (
    Backbone,
    InputSpec,
    build_backbone,
    checkpoint_sha256,
    default_checkpoint,
)
from pipeline.stores import ChunkedStore, create_records_array, open_corpus, provenance


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


def extract_embeddings(
    name: str,
    corpus_path: Path,
    out: Path,
    checkpoint: Path | None = None,
    batch_size: int = 32,
    chunk_records: int = 256,
    device: str = "auto",
    stop_after_chunks: int | None = None,
) -> dict:
    """Write embeddings/NAME.zarr; returns a summary. `stop_after_chunks` simulates a kill (tests, benchmarks)."""
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint(name)
    backbone = build_backbone(name, checkpoint)
    config = backbone.config  # the registered config, or one sized by the checkpoint (a user's own DLinear/TimesNet)
    torch_device = resolve_device(device)
    backbone.to(torch_device)

    corpus = open_corpus(corpus_path)
    count = corpus["signals"].shape[0]
    corpus_rate = float(corpus.attrs["sampling_rate"])
    corpus_leads = list(corpus.attrs["leads"])
    qc_ok = corpus["qc_ok"][:]
    fingerprint = {
        "backbone": name,
        "spec": config.spec.as_dict(),
        "checkpoint_sha256": checkpoint_sha256(checkpoint),
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

    group = store.open(create)
    pending = store.pending()
    with progress_bar(f"extract {name}", store.n_chunks, completed=store.n_chunks - len(pending)) as advance:
        for written, index in enumerate(pending):
            if stop_after_chunks is not None and written >= stop_after_chunks:
                return {"backbone": name, "stopped_after_chunks": written}
            rows = store.chunk(index)
            keep = np.flatnonzero(qc_ok[rows])
            if len(keep):
                signals = corpus["signals"][rows][keep]
                outputs = embed_batches(backbone, backbone_inputs(signals, corpus_rate, corpus_leads, backbone), batch_size, torch_device)
                for output, value in outputs.items():
                    block = np.full((rows.stop - rows.start, *value.shape[1:]), np.nan, dtype=np.float32)
                    block[keep] = value
                    group[output][rows] = block
            store.mark_done(index)
            advance()
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
