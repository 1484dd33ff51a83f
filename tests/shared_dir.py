"""Where the shared real-data/fixture folder is, for the tests (through conftest) and the benchmarks alike:
$ENECG_SHARED when set, else `shared/` beside the checkout (../shared). Imports nothing heavy, so a benchmark
can use it without pytest or torch."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ["ENECG_SHARED"]).expanduser().resolve() if os.environ.get("ENECG_SHARED") else REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "backbones"
DATA = SHARED / "data"
