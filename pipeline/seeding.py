"""Seeded, deterministic blocks of torch code that leave the caller's RNG and flags as they were."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch and use deterministic algorithms inside the block.

    Both are process-wide: the caller's RNG state and deterministic-algorithms switch are put back on exit, so
    code that runs after (a notebook, a test) neither shares the block's random stream nor keeps paying for it.
    """
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)  # warn, not fail, on a GPU op that has none
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
