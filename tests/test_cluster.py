"""prepare and extract on a dask.distributed LocalCluster of 2 worker processes, on the CPU (params `cluster`).

The stores must be the bytes of the single-process run, and a worker killed mid-run must change none of them:
the scheduler gives its chunks to the other worker, and no chunk that was complete is written again (its chunk
file keeps its inode and mtime: Zarr writes a chunk by renaming a temporary file).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from pipeline.cluster import cluster_client
from pipeline.stage_one.corpus import prepare_corpus
from pipeline.stage_one.extract import extract_embeddings
from tests.test_kill_resume import identity, make_project, qc_settings, tree

pytestmark = pytest.mark.slow  # worker processes: each imports torch, zarr and the pipeline (seconds)

CHUNK = 4  # records per chunk: 48 records -> 12 chunks, so that a kill lands while most are still to do
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as the in-process runs (tests/conftest.py)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    params = make_project(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        prepare(params, Path("alone/corpus.zarr"))
        extract_embeddings("dlinear", Path("alone/corpus.zarr"), Path("alone/dlinear.zarr"), chunk_records=CHUNK)
    return folder, params


@pytest.fixture
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, env=ONE_THREAD) as local:
        yield local


def prepare(params: dict, out: Path, client=None) -> dict:
    return prepare_corpus(Path(params["data"]["manifest"]), Path(params["data"]["root"]), out, qc_settings(params),
                          chunk_records=CHUNK, workers=1, client=client)


def kill_a_worker_after_the_first_chunk(cluster: LocalCluster, partial: Path, chunks: int, files: str) -> dict:
    """A thread that SIGKILLs one worker process as soon as the first chunk of `partial` is flagged done, noting
    then which chunks were complete (flagged) and the identity of their `files` (a format of the chunk index)."""
    seen: dict = {"complete": {}}

    def watch() -> None:
        flags = [partial / "done" / "c" / str(index) for index in range(chunks)]
        while not any(flag.exists() for flag in flags):
            time.sleep(0.001)
        victim = next(iter(cluster.workers.values())).process.pid
        os.kill(victim, signal.SIGKILL)
        seen["complete"] = {index: identity(partial / files.format(index)) for index, flag in enumerate(flags) if flag.exists()}

    seen["thread"] = threading.Thread(target=watch, daemon=True)
    seen["thread"].start()
    return seen


def test_prepare_and_extract_on_a_cluster_write_the_single_process_bytes(project, cluster, monkeypatch):
    folder, params = project
    monkeypatch.chdir(folder)
    with Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        prepare(params, Path("cluster/corpus.zarr"), client)
        extract_embeddings("dlinear", Path("alone/corpus.zarr"), Path("cluster/dlinear.zarr"), chunk_records=CHUNK, client=client)
    assert tree(Path("cluster/corpus.zarr")) == tree(Path("alone/corpus.zarr"))
    assert tree(Path("cluster/dlinear.zarr")) == tree(Path("alone/dlinear.zarr"))


@pytest.mark.parametrize("stage", ["prepare", "extract"])
def test_a_worker_killed_mid_run_changes_no_byte_and_redoes_no_complete_chunk(project, cluster, monkeypatch, stage):
    folder, params = project
    monkeypatch.chdir(folder)
    out = Path(f"killed/{stage}.zarr")
    chunks = -(-48 // CHUNK)
    files = "signals/c/{}/0/0" if stage == "prepare" else "embedding/c/{}/0"
    seen = kill_a_worker_after_the_first_chunk(cluster, out.with_name(out.name + ".partial"), chunks, files)
    with Client(cluster) as client:
        if stage == "prepare":
            prepare(params, out, client)
        else:
            extract_embeddings("dlinear", Path("alone/corpus.zarr"), out, chunk_records=CHUNK, client=client)
    seen["thread"].join(timeout=60)
    assert 0 < len(seen["complete"]) < chunks, "the kill must land while chunks are still to do"
    assert tree(out) == tree(Path("alone/corpus.zarr" if stage == "prepare" else "alone/dlinear.zarr"))
    assert {index: identity(out / files.format(index)) for index in seen["complete"]} == seen["complete"]  # not rewritten


def test_params_cluster_none_runs_in_this_process_and_local_starts_a_cluster():
    with cluster_client({"scheduler": "none"}) as client:
        assert client is None
    with cluster_client({"scheduler": "local", "workers": 1}) as client:
        assert len(client.scheduler_info()["workers"]) == 1
