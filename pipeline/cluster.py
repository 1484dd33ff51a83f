"""Where `prepare` and `extract` run their chunks: in this process, or on a dask.distributed cluster.

params.yaml `cluster`:

    cluster:
      scheduler: none        # none: in this process | local: a LocalCluster of `workers` processes on this machine
                             # | tcp://host:8786: the scheduler of a running cluster (dask-scheduler / dask-worker,
                             #   dask-cuda's LocalCUDACluster, dask-jobqueue's SLURMCluster, ...)
      workers: 2             # for `local`

A chunked store (pipeline.stores.ChunkedStore) is filled by one task per pending chunk: the task writes that
chunk's rows of every array and then its own `done` flag, so no two writers ever share a Zarr chunk, and a task
that finds its flag already set returns at once. A killed worker's tasks are rescheduled by the scheduler and a
killed client resumes from the flags, both at chunk granularity, and the store is the same bytes whichever
ran it. The engine is dask.distributed's; nothing here schedules, retries or moves data itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from pipeline.progress import progress_bar

NONE, LOCAL = "none", "local"


@contextlib.contextmanager
def cluster_client(settings: dict | None) -> Iterator[object | None]:
    """A dask.distributed Client for params `cluster` (None for `scheduler: none`), closed on exit."""
    scheduler = str((settings or {}).get("scheduler", NONE))
    if scheduler == NONE:
        yield None
        return
    from distributed import Client, LocalCluster  # imported only when asked for: ~1 s of start-up

    if scheduler == LOCAL:
        # one thread per worker process: the chunk tasks hold the GIL (record parsing) or their own torch threads
        with LocalCluster(n_workers=int(settings.get("workers", 2)), threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
    else:
        with Client(scheduler) as client:
            yield client


def gpu_resources(client) -> dict | None:
    """{"GPU": 1} when the cluster's workers declare GPUs (`dask worker --resources GPU=1`, or dask-cuda's), so
    that each extract task holds one; None otherwise."""
    workers = client.scheduler_info()["workers"].values()
    return {"GPU": 1} if any("GPU" in worker.get("resources", {}) for worker in workers) else None


def run_chunks(
    client,
    label: str,
    pending: Sequence[int],
    work: Callable[[int, object], None],
    sizes: Callable[[int], int],
    total: int,
    completed: int = 0,
    payload: Callable[[int], object] = lambda index: None,
    resources: dict | None = None,
    after: Callable[[int], None] | None = None,
    stop_after: int | None = None,
) -> bool:
    """`work(index, payload(index))` for every pending chunk, in this process (`client` None) or as one cluster
    task each (`work` and the payload are what is sent: a chunk's own inputs, never the whole corpus's), with a
    progress bar advanced by `sizes(index)` as chunks finish (in any order) and `after(index)` called for each.

    `stop_after` (in this process only) stops after that many chunks, as a kill would (tests, benchmarks);
    returns whether every chunk ran."""
    with progress_bar(label, total, completed=completed) as advance:
        if client is None:
            for count, index in enumerate(pending):
                if stop_after is not None and count >= stop_after:
                    return False
                work(index, payload(index))
                advance(sizes(index))
                if after:
                    after(index)
            return True
        from distributed import as_completed

        futures = client.map(work, list(pending), [payload(index) for index in pending], resources=resources, pure=False)
        chunk_of = {future.key: index for future, index in zip(futures, pending)}
        try:
            for future in as_completed(futures):
                future.result()  # a task's error is raised here, with the worker's traceback
                index = chunk_of[future.key]
                advance(sizes(index))
                if after:
                    after(index)
        finally:
            client.cancel(futures)  # nothing is left running on an error (finished tasks are unaffected)
    return True
