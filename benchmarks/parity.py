"""Max abs difference between every native backbone and its reference implementation, on the shared fixtures.

    python benchmarks/parity.py      # writes benchmarks/parity.md

The fixtures (../shared/fixtures/backbones) hold small random-weight checkpoints in each model's published
container, a fixed input, and the reference implementation's outputs (see their READMEs for the exact calls).
"""

import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.stage_one.parity import FIXTURE_MODULES, fixture_outputs, fixture_tolerance, max_abs_difference

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.shared_dir import FIXTURES  # noqa: E402  ($ENECG_SHARED, else ../shared)


def main() -> None:
    torch.set_num_threads(1)
    lines = [
        "# Parity with the reference implementations",
        "",
        "Command: `python benchmarks/parity.py`. Native backbone (loaded through the project's own loader, raw forward,",
        "no preprocessing) vs. the reference's outputs on the shared random-weight fixtures, float32 on the CPU.",
        "",
        "| fixture | backbone module | output | max abs diff | tolerance (atol, rtol) | within |",
        "|---|---|---|---|---|---|",
    ]
    for fixture in sorted(FIXTURE_MODULES):
        folder = FIXTURES / fixture
        atol, rtol = fixture_tolerance(folder)
        for name, (got, expected) in fixture_outputs(folder).items():
            difference = max_abs_difference(got, expected)
            within = bool(np.allclose(got, expected, atol=atol, rtol=rtol))
            lines.append(f"| {fixture} | {FIXTURE_MODULES[fixture]} | {name} | {difference:.2e} | {atol:g}, {rtol:g} | {'yes' if within else 'NO'} |")
    text = "\n".join(lines) + "\n"
    (Path(__file__).parent / "parity.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
