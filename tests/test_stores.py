"""Resumable chunked stores and atomic artifacts."""

import numpy as np
import pytest

from pipeline.errors import StoreError
from pipeline.stores import ChunkedStore, atomic_path, create_records_array, open_complete


def fill(store, values, stop_after=None):
    group = store.open(lambda g: create_records_array(g, "x", values.shape, store.chunk_records, "float32", np.nan))
    written = []
    for count, index in enumerate(store.pending()):
        if stop_after is not None and count >= stop_after:
            return written
        group["x"][store.chunk(index)] = values[store.chunk(index)]
        store.writer.mark_done(group, index)
        written.append(index)
    store.finish({"what": "test"})
    return written


def test_resume_writes_only_missing_chunks_and_equals_uninterrupted(tmp_path):
    values = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    assert fill(ChunkedStore(tmp_path / "a.zarr", {"v": 1}, 10, 4), values, stop_after=2) == [0, 1]
    assert not (tmp_path / "a.zarr").exists() and (tmp_path / "a.zarr.partial").exists()
    with pytest.raises(StoreError, match="partial store from an interrupted run exists"):
        open_complete(tmp_path / "a.zarr", "enecg extract")
    resumed = ChunkedStore(tmp_path / "a.zarr", {"v": 1}, 10, 4)
    assert fill(resumed, values) == [2] and resumed.resumed_chunks == 2
    fill(ChunkedStore(tmp_path / "b.zarr", {"v": 1}, 10, 4), values)
    a, b = open_complete(tmp_path / "a.zarr", "x"), open_complete(tmp_path / "b.zarr", "x")
    assert np.array_equal(a["x"][:], b["x"][:]) and np.array_equal(a["x"][:], values)
    assert a.attrs["what"] == "test" and a.attrs["fingerprint"] == {"v": 1}


def test_partial_store_from_other_inputs_is_discarded(tmp_path):
    values = np.ones((8, 2), dtype=np.float32)
    fill(ChunkedStore(tmp_path / "a.zarr", {"checkpoint": "old"}, 8, 4), values, stop_after=1)
    fresh = ChunkedStore(tmp_path / "a.zarr", {"checkpoint": "new"}, 8, 4)
    assert fill(fresh, values * 2) == [0, 1] and fresh.resumed_chunks == 0
    assert np.array_equal(open_complete(tmp_path / "a.zarr", "x")["x"][:], values * 2)


def test_atomic_path_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
