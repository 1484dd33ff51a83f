"""Shared test helpers: where ../shared is, and a skip with a clear reason where it is absent."""

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "backbones"
DATA = SHARED / "data"


def need_shared(path: Path) -> Path:
    """Return `path`, or skip the test: the real data lives beside the project, not in a user's clone."""
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared real-data/fixture folder beside the checkout")
    return path


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Small tensors gain nothing from threads, and on a busy 2-core machine every op then waits for a second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
