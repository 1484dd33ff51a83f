"""Seeded, deterministic blocks of torch code that leave the caller's RNG and flags as they were."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, and where CUDA is available use deterministic algorithms, inside the block.

    Both are process-wide: the caller's RNG state and deterministic-algorithms switch are put back on exit, so
    code that runs after (a notebook, a test) neither shares the block's random stream nor keeps paying for it.
    The switch is for CUDA kernels (the CPU ops used here are deterministic for a given thread count, which
    tests/test_determinism.py checks bit for bit); flipping it imports torch's compiler config, ~2 s of every
    stage's start-up, so a CPU-only process leaves it alone.
    """
    switch = torch.cuda.is_available()
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if switch:
            torch.use_deterministic_algorithms(True, warn_only=True)  # warn, not fail, on a GPU op that has none
        try:
            yield
        finally:
            if switch:
                torch.use_deterministic_algorithms(before[0], warn_only=before[1])
