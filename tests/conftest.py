"""Shared test helpers: where ../shared is, and a skip with a clear reason where it is absent."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "backbones"
DATA = SHARED / "data"


def need_shared(path: Path) -> Path:
    """Return `path`, or skip the test: the real data lives beside the project, not in a user's clone."""
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared real-data/fixture folder beside the checkout")
    return path
