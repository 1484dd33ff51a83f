"""Every native backbone reproduces its reference implementation on the shared random-weight fixtures."""

import numpy as np
import pytest

from pipeline.stage_one.parity import FIXTURE_MODULES, fixture_outputs, fixture_tolerance
from tests.conftest import FIXTURES, need_shared


@pytest.mark.parametrize("fixture", sorted(FIXTURE_MODULES))
def test_backbone_matches_reference(fixture):
    folder = need_shared(FIXTURES / fixture)
    atol, rtol = fixture_tolerance(folder)
    outputs = fixture_outputs(folder)
    assert outputs, f"{fixture}: the backbone compared no outputs"
    for name, (got, expected) in outputs.items():
        np.testing.assert_allclose(got, expected, atol=atol, rtol=rtol, err_msg=f"{fixture}/{name}")
