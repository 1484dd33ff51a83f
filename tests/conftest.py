"""Shared test helpers: where the shared folder is ($ENECG_SHARED, else ../shared beside the checkout), and a
skip with a clear reason where it is absent."""

from pathlib import Path

import pytest
import torch

from tests.shared_dir import DATA, FIXTURES, SHARED  # noqa: F401  (the one definition, also used by benchmarks/)


def need_shared(path: Path) -> Path:
    """Return `path`, or skip the test: the real data lives beside the project, not in a user's clone."""
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared real-data/fixture folder "
                    "(set ENECG_SHARED to it, or put it at ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Small tensors gain nothing from threads, and on a busy 2-core machine every op then waits for a second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """The slow files first: with the suite spread over the cores (pytest-xdist, one file per worker at a time),
    the longest file then runs beside the quick ones instead of alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
