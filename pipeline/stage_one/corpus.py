"""`prepare`: the manifest's WFDB records, read in parallel with dask, checked, and put on one canonical grid.

corpus.zarr holds `signals` [N, 12, L] float32 mV (LEADS_12 order), `record_id`, `subject_id`, `qc_ok` and
`qc_reason` for every manifest record in manifest order. An excluded record keeps its row (zeros, qc_ok
False, the reason), so row i is always manifest line i's record and later stages index by row.

Everything that can be checked without reading a signal is checked first: the manifest's lines, every
record path (inside the data root), and the labels of the tasks in params (their types), so that a bad
manifest fails in seconds, not after hours of reading. `strict` stops at the first chunk that excludes a
record; the chunks written so far are kept, so a rerun without it resumes.

Each chunk of records is one task (`prepare_chunk`), run in this process or on a dask.distributed cluster's
workers (params `cluster`, pipeline.cluster); within a task, records are read by dask's threads in this
process, one after the other on a cluster worker (the cluster's parallelism is its workers).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import dask
import numpy as np
import zarr

from pipeline import manifests
from pipeline.cluster import run_chunks
from pipeline.ecg import LEADS_12
from pipeline.errors import ManifestError, RecordError
from pipeline.manifests import ManifestRecord, read_manifest, resolve_record
from pipeline.stage_one import fast_wfdb, signals
from pipeline.stage_one.signals import QCSettings, load_canonical
from pipeline.stores import (
    ChunkWriter,
    ChunkedStore,
    create_records_array,
    file_sha256,
    provenance,
    strings,
)
from pipeline.tasks import Task, targets


def _load(path: Path, settings: QCSettings) -> tuple[np.ndarray | None, str]:
    try:
        return load_canonical(path, settings), ""
    except RecordError as error:
        return None, str(error).removeprefix(f"{path}: ")


def _load_all(paths: Sequence[Path], settings: QCSettings) -> list[tuple[np.ndarray | None, str]]:
    return [_load(path, settings) for path in paths]


def load_records(paths: Sequence[Path], settings: QCSettings, workers: int = 2, scheduler: str = "threads") -> list[tuple[np.ndarray | None, str]]:
    """Each record read, checked and put on the grid (or None and the reason), on `workers` dask workers.

    dask gets four tasks per worker, each a run of consecutive records: a task per record costs dask about
    as much scheduling (~0.5 ms) as reading the record itself, and four per worker still even out slow ones.
    """
    if workers <= 1:
        return _load_all(paths, settings)
    step = max(1, -(-len(paths) // (4 * workers)))
    runs = [paths[start : start + step] for start in range(0, len(paths), step)]
    loaded = dask.compute(*[dask.delayed(_load_all)(run, settings) for run in runs], scheduler=scheduler, num_workers=workers)
    return [result for run in loaded for result in run]


def reason_kind(reason: str) -> str:
    """Group reasons for the summary table, so that one row counts e.g. every truncated file: details in
    parentheses are dropped, file names become FILE, quoted values other than lead names '...', numbers '#';
    lead lists are kept."""
    kind, previous = reason, None
    while kind != previous:  # nested parentheses, innermost first
        previous, kind = kind, re.sub(r" ?\([^()]*\)", "", kind)
    kind = re.sub(r"\S*/\S*|\S+\.(hea|dat)\b", "FILE", kind)
    kind = re.sub(r"(?<!\w)'([^']*)'", lambda match: match.group(0) if match.group(1) in LEADS_12 else "'...'", kind)
    kind = re.sub(r"\['\.\.\.'(, '\.\.\.')*\]", "[...]", kind)  # a list of unknown names
    return re.sub(r"\b\d+(\.\d+)?\b", "#", kind)


def code_sha256() -> str:
    """sha256 of the code that decides what the corpus holds: a partial store that other code started (a fix
    made after a crash) is started over, never resumed and mixed."""
    digest = hashlib.sha256()
    for source in (manifests.__file__, signals.__file__, fast_wfdb.__file__, __file__):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def record_paths(manifest: Path, root: Path, records: list[ManifestRecord]) -> list[Path]:
    """Every record's path on disk; one outside the data root is an error naming the manifest line."""
    paths = []
    for record in records:
        try:
            paths.append(resolve_record(root, record.path))
        except ManifestError as error:
            raise ManifestError(f"{manifest}:{record.line}: field 'path': {error}") from None
    return paths


def check_labels(manifest: Path, records: list[ManifestRecord], tasks: Sequence[Task]) -> None:
    """Each task's label values have the type its task needs (the error names file, line and field)."""
    for task in tasks:
        try:
            targets(task, records)
        except ManifestError as error:
            raise ManifestError(f"{manifest}: {error}") from None


def prepare_chunk(writer: ChunkWriter, settings: QCSettings, workers: int, scheduler: str, index: int, paths: Sequence[Path]) -> None:
    """Chunk `index` of corpus.zarr from its records' `paths`: read, checked, written, then flagged done
    (nothing, if a killed run's task already flagged it)."""
    group = writer.open()
    if writer.is_done(group, index):
        return
    rows = writer.rows(index)
    loaded = load_records(paths, settings, workers, scheduler)
    block = np.zeros((len(loaded), len(LEADS_12), settings.samples), dtype=np.float32)
    for row, (signal, _) in enumerate(loaded):
        if signal is not None:
            block[row] = signal
    group["signals"][rows] = block
    group["qc_ok"][rows] = np.array([signal is not None for signal, _ in loaded])
    group["qc_reason"][rows] = np.array([reason for _, reason in loaded])
    writer.mark_done(group, index)


def prepare_corpus(
    manifest: Path,
    root: Path,
    out: Path,
    settings: QCSettings,
    chunk_records: int = 256,
    workers: int = 2,
    scheduler: str = "threads",
    strict: bool = False,
    tasks: Sequence[Task] = (),
    client=None,
) -> dict:
    """Build corpus.zarr (resumable, atomic); returns the summary with excluded counts by reason.

    `tasks` are the params' tasks, whose labels are checked before any record is read. `client`: a
    dask.distributed Client whose workers prepare the chunks (pipeline.cluster), or None for this process.
    """
    records: list[ManifestRecord] = read_manifest(manifest)
    paths = record_paths(manifest, root, records)
    check_labels(manifest, records, tasks)
    count = len(records)
    store = ChunkedStore(
        out,
        fingerprint={
            "manifest_sha256": file_sha256(manifest),
            "root": str(Path(root).resolve()),
            "qc": asdict(settings),
            "code_sha256": code_sha256(),
        },
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
    size = lambda index: store.chunk(index).stop - store.chunk(index).start  # noqa: E731
    threads = workers if client is None else 1
    work = functools.partial(prepare_chunk, store.writer, settings, threads, scheduler)
    run_chunks(client, "prepare: reading records", pending, work, size, count, completed=count - sum(map(size, pending)),
               payload=lambda index: paths[store.chunk(index)],
               after=(lambda index: _fail_on_exclusions(group, paths, store.chunk(index))) if strict else None)

    reasons = strings(group["qc_reason"])
    ok = group["qc_ok"][:]
    if strict:  # chunks resumed from an earlier run without --strict
        _fail_on_exclusions(group, paths, slice(0, count))
    excluded = Counter(reason_kind(reason) for reason, keep in zip(reasons, ok) if not keep)
    # The store holds only what the inputs determine, so a resumed run's store is byte-identical to an
    # uninterrupted one; how the run went (resumed chunks) is returned, not stored.
    summary = {"records": count, "kept": int(ok.sum()), "excluded": dict(excluded)}
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
    return {**summary, "resumed_chunks": store.resumed_chunks}


def _fail_on_exclusions(group: zarr.Group, paths: list[Path], rows: slice) -> None:
    """--strict: any excluded record in `rows` is an error listing the first few with their reasons."""
    bad = rows.start + np.flatnonzero(~group["qc_ok"][rows])
    if len(bad):
        reasons = group["qc_reason"][rows]
        listed = "; ".join(f"{paths[i]}: {reasons[i - rows.start]}" for i in bad[:5])
        raise RecordError(
            f"--strict: {len(bad)} record(s) excluded ({listed}{' ...' if len(bad) > 5 else ''}); fix or remove "
            "them, or run without --strict to quarantine them (the chunks read so far are kept)"
        )
