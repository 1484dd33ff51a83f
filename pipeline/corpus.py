"""`prepare`: the manifest's WFDB records, read in parallel with dask, checked, and put on one canonical grid.

corpus.zarr holds `signals` [N, 12, L] float32 mV (LEADS_12 order), `record_id`, `subject_id`, `qc_ok` and
`qc_reason` for every manifest record in manifest order. An excluded record keeps its row (zeros, qc_ok
False, the reason), so row i is always manifest line i's record and later stages index by row.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import dask
import numpy as np
import zarr

from pipeline.backbones import LEADS_12
from pipeline.errors import RecordError, StoreError
from pipeline.manifests import ManifestRecord, read_manifest, resolve_record
from pipeline.progress import progress_bar
from pipeline.signals import QCSettings, load_canonical
from pipeline.stores import ChunkedStore, create_records_array, file_sha256, open_complete, provenance, strings

CORPUS_HINT = "enecg prepare"


def _load(path: Path, settings: QCSettings) -> tuple[np.ndarray | None, str]:
    try:
        return load_canonical(path, settings), ""
    except RecordError as error:
        return None, str(error).removeprefix(f"{path}: ")


def reason_kind(reason: str) -> str:
    """Group reasons for the summary table: numbers become '#', lead lists are kept."""
    return re.sub(r"\d+(\.\d+)?", "#", reason)


def prepare_corpus(
    manifest: Path,
    root: Path,
    out: Path,
    settings: QCSettings,
    chunk_records: int = 256,
    workers: int = 2,
    scheduler: str = "threads",
    strict: bool = False,
) -> dict:
    """Build corpus.zarr (resumable, atomic); returns the summary with excluded counts by reason."""
    records: list[ManifestRecord] = read_manifest(manifest)
    paths = [resolve_record(root, record.path) for record in records]
    count = len(records)
    store = ChunkedStore(
        out,
        fingerprint={"manifest_sha256": file_sha256(manifest), "root": str(Path(root).resolve()), "qc": asdict(settings)},
        n_records=count,
        chunk_records=chunk_records,
    )

    def create(group: zarr.Group) -> None:
        create_records_array(group, "signals", (count, len(LEADS_12), settings.samples), chunk_records, "float32", 0.0)
        create_records_array(group, "qc_ok", (count,), chunk_records, bool, False)
        for name, values in (("record_id", [r.record_id for r in records]), ("subject_id", [r.subject_id for r in records])):
            create_records_array(group, name, (count,), count, str)[:] = np.array(values)
        create_records_array(group, "qc_reason", (count,), chunk_records, str)[:] = np.array(["not read"] * count)

    group = store.open(create)
    pending = store.pending()
    done_records = count - sum(store.chunk(i).stop - store.chunk(i).start for i in pending)
    with progress_bar("prepare: reading records", count, completed=done_records) as advance:
        for index in pending:
            rows = store.chunk(index)
            loaded = dask.compute(
                *[dask.delayed(_load)(path, settings) for path in paths[rows]],
                scheduler=scheduler if workers > 1 else "sync",
                num_workers=workers,
            )
            block = np.zeros((len(loaded), len(LEADS_12), settings.samples), dtype=np.float32)
            for row, (signal, _) in enumerate(loaded):
                if signal is not None:
                    block[row] = signal
            group["signals"][rows] = block
            group["qc_ok"][rows] = np.array([signal is not None for signal, _ in loaded])
            group["qc_reason"][rows] = np.array([reason for _, reason in loaded])
            store.mark_done(index)
            advance(len(loaded))

    reasons = strings(group["qc_reason"])
    ok = group["qc_ok"][:]
    excluded = Counter(reason_kind(reason) for reason, keep in zip(reasons, ok) if not keep)
    if strict and excluded:
        first = next(i for i in range(count) if not ok[i])
        raise RecordError(
            f"--strict: {sum(excluded.values())} of {count} records excluded, e.g. {paths[first]}: {reasons[first]}"
        )
    summary = {"records": count, "kept": int(ok.sum()), "excluded": dict(excluded), "resumed_chunks": store.resumed_chunks}
    store.finish(
        {
            "leads": list(LEADS_12),
            "sampling_rate": settings.sampling_rate,
            "samples": settings.samples,
            "units": "mV",
            "summary": summary,
            "provenance": provenance(manifest=str(manifest), **store.fingerprint),
        }
    )
    return summary


def open_corpus(path: Path) -> zarr.Group:
    group = open_complete(path, CORPUS_HINT)
    if "signals" not in group:
        raise StoreError(f"{path} is not a corpus store (no 'signals'); run `{CORPUS_HINT}`")
    return group
