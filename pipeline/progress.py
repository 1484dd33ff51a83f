"""Progress bars (rich) for every long job: plain loops and dask computations alike."""

from __future__ import annotations

import contextlib
from typing import Iterator

from dask.callbacks import Callback
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


@contextlib.contextmanager
def progress_bar(description: str, total: int, completed: int = 0) -> Iterator[callable]:
    """Yield `advance(n=1)`; the bar starts at `completed` (e.g. chunks a resumed run already has)."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total, completed=completed)
        yield lambda n=1: progress.advance(task, n)


class _DaskProgress(Callback):
    def __init__(self, advance):
        super().__init__()
        self._advance = advance

    def _posttask(self, key, result, dsk, state, worker_id):
        self._advance(1)


@contextlib.contextmanager
def dask_progress(description: str, total: int) -> Iterator[None]:
    """Show a bar that advances as dask finishes tasks of the computation run inside the block."""
    with progress_bar(description, total) as advance, _DaskProgress(advance):
        yield
