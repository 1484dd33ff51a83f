"""Artifacts on disk: atomic writes, and resumable chunked Zarr stores that record what produced them.

A long job (prepare over 800k records, extract on a GPU for hours) writes into `<store>.partial`, one chunk
of records at a time, and ticks that chunk in a `done` array only after its data is written. A killed run
resumes at the first chunk not ticked, provided the partial store was started from the same inputs (its
`fingerprint` attribute); otherwise it starts over. Only a complete store is renamed to its final name, so
a later stage never reads a half-written one. Every other artifact (a file or a folder) is written under a
temporary sibling name and renamed (`atomic_path`); temporaries a killed writer left behind are deleted by
the next writer of the same artifact.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pipeline import __version__
from pipeline.errors import StoreError

# zstd level 1 with byte shuffle: on PTB-XL's 500 Hz records it writes corpus signals in 1.8 ms of CPU per record
# against 5.4 ms for level 5 with bitshuffle, to a better ratio (1.82 vs 1.47); writing the store was what bounded
# `prepare`, now 396 records/s instead of 151 (benchmarks/prepare.md)
COMPRESSOR = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
# Zarr writes each chunk to `<key>.<uuid4 hex>.partial` and renames it; a kill in between leaves that file.
TORN_WRITE = re.compile(r"\.[0-9a-f]{32}\.partial$")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical(value) -> object:
    """A JSON round trip, so fingerprints compare equal whether they came from YAML, code or Zarr attrs."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_leftovers(target: Path) -> None:
    """Delete the temporaries a killed writer of `target` left beside it (only those of dead processes)."""
    for pattern in (f".{glob.escape(target.name)}.tmp-*", f"{glob.escape(target.name)}.old-*"):
        for leftover in target.parent.glob(pattern):
            pid = leftover.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)


def _replace_dir(source: Path, target: Path) -> None:
    """Move a finished directory into place; an older target is removed only after the new one is there."""
    remove_leftovers(target)
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces `target` only if the block finishes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.is_dir():
            _replace_dir(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path: Path, value) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def provenance(**inputs) -> dict:
    """What produced an artifact: the package version plus the inputs' hashes and params."""
    return canonical({"enecg_version": __version__, **inputs})


@dataclass(frozen=True)
class ChunkWriter:
    """What one task needs to fill one chunk of a partial store, in any process (it pickles): the chunk's rows,
    and the store to write them and the chunk's `done` flag into (one Zarr chunk per flag, so that tasks running
    at once never write the same chunk file; pipeline.cluster)."""

    partial: Path
    n_records: int
    chunk_records: int

    def rows(self, index: int) -> slice:
        return slice(index * self.chunk_records, min((index + 1) * self.chunk_records, self.n_records))

    def open(self) -> zarr.Group:
        return zarr.open_group(self.partial, mode="r+")

    def is_done(self, group: zarr.Group, index: int) -> bool:
        return bool(group["done"][index])

    def mark_done(self, group: zarr.Group, index: int) -> None:
        """Written last, after the chunk's rows: a chunk whose flag is set is complete."""
        group["done"][index] = True


class ChunkedStore:
    """A Zarr group filled chunk by chunk, resumable after a kill, published atomically when complete."""

    def __init__(self, path: Path, fingerprint: dict, n_records: int, chunk_records: int):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.fingerprint = canonical(fingerprint)
        self.n_records = n_records
        self.chunk_records = chunk_records
        self.n_chunks = max(1, -(-n_records // chunk_records))
        self.writer = ChunkWriter(self.partial.resolve(), n_records, chunk_records)
        self.group: zarr.Group | None = None
        self.resumed_chunks = 0

    def open(self, create_arrays: Callable[[zarr.Group], None]) -> zarr.Group:
        """Resume a partial store made from the same inputs, or start a fresh one with `create_arrays`."""
        if self.partial.exists():
            try:
                group = zarr.open_group(self.partial, mode="r+")
                same = group.attrs.get("fingerprint") == self.fingerprint
            except Exception:  # an unreadable leftover of a killed run is simply discarded
                same = False
            if same:
                self._remove_torn_writes()
                self.group = group
                self.resumed_chunks = int(np.sum(group["done"][:]))
                return group
            shutil.rmtree(self.partial)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(self.partial, mode="w")
        create_arrays(group)
        group.create_array("done", shape=(self.n_chunks,), chunks=(1,), dtype=bool, fill_value=False)
        group.attrs.update({"fingerprint": self.fingerprint, "chunk_records": self.chunk_records, "complete": False})
        self.group = group
        return group

    def chunk(self, index: int) -> slice:
        return self.writer.rows(index)

    def pending(self) -> list[int]:
        done = self.group["done"][:]
        return [index for index in range(self.n_chunks) if not done[index]]

    def _remove_torn_writes(self) -> None:
        """Temporary chunk files of a write that was killed (this process, or a cluster worker whose chunk was then
        rewritten by another): else they would be published with the store."""
        for leftover in self.partial.rglob("*.partial"):
            if TORN_WRITE.search(leftover.name) and leftover.is_file():
                leftover.unlink()

    def finish(self, attrs: dict) -> None:
        if self.pending():
            raise StoreError(f"{self.partial}: chunks {self.pending()[:10]} are not written; cannot publish")
        self._remove_torn_writes()
        self.group.attrs.update({**canonical(attrs), "complete": True})
        _replace_dir(self.partial, self.path)


def create_records_array(group: zarr.Group, name: str, shape: tuple, chunk_records: int, dtype, fill_value=None):
    """An array chunked along records only (one chunk = `chunk_records` whole records), compressed."""
    return group.create_array(
        name,
        shape=shape,
        chunks=(chunk_records, *shape[1:]),
        dtype=dtype,
        compressors=COMPRESSOR if np.dtype(dtype).kind in "fiub" else "auto",
        fill_value=fill_value,
    )


def open_complete(path: Path, how_to_make: str) -> zarr.Group:
    """Open a finished store read-only, or say which command makes it."""
    path = Path(path)
    if not path.exists():
        hint = " (a partial store from an interrupted run exists; rerun to resume)" if path.with_name(path.name + ".partial").exists() else ""
        raise StoreError(f"{path} does not exist{hint}; run `{how_to_make}`")
    group = zarr.open_group(path, mode="r")
    if not group.attrs.get("complete", False):
        raise StoreError(f"{path} is incomplete; run `{how_to_make}` again")
    return group


def strings(array) -> np.ndarray:
    """A Zarr string array as a plain numpy array of Python str."""
    return np.array([str(value) for value in array[:]], dtype=object).astype(str)


CORPUS_HINT = "enecg prepare"


def open_corpus(path: Path) -> zarr.Group:
    """corpus.zarr, complete and a corpus (what `prepare` writes and every later stage reads)."""
    group = open_complete(path, CORPUS_HINT)
    if "signals" not in group:
        raise StoreError(f"{path} is not a corpus store (no 'signals'); run `{CORPUS_HINT}`")
    return group


def open_embeddings(path: Path, name: str) -> zarr.Group:
    """embeddings/NAME.zarr, complete (what `extract` writes and stage two reads)."""
    return open_complete(path, f"enecg extract --model {name}")
