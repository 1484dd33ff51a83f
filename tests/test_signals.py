"""WFDB reading onto the canonical grid: leads by name, units, resampling, and the QC exclusions."""

import numpy as np
import pytest
import wfdb

from pipeline.stage_one.backbones import LEADS_12
from pipeline.errors import RecordError
from pipeline.stage_one.signals import QCSettings, check_quality, load_canonical, read_record, resample
from tests.conftest import DATA, need_shared


def write_record(directory, name, signal_mv, fs, leads=LEADS_12, units="mV"):
    """Write [T, C] millivolts as a format-16 WFDB record in the given unit and lead order."""
    scale = {"mV": 1.0, "uV": 1000.0}[units]
    wfdb.wrsamp(name, fs=fs, units=[units] * len(leads), sig_name=list(leads), p_signal=signal_mv * scale,
                fmt=["16"] * len(leads), adc_gain=[1000.0 / scale] * len(leads), baseline=[0] * len(leads), write_dir=str(directory))
    return directory / name


def sines(fs, seconds=10.0, leads=12):
    t = np.arange(int(fs * seconds)) / fs
    return np.stack([np.sin(2 * np.pi * (1 + lead) * t) * 0.5 for lead in range(leads)], axis=1)


def test_leads_are_mapped_by_name_and_units_converted(tmp_path):
    signal = sines(500)
    order = list(reversed(range(12)))
    path = write_record(tmp_path, "rev", signal[:, order], 500, leads=[LEADS_12[i].upper() for i in order], units="uV")
    read, fs = read_record(path)
    assert fs == 500 and read.shape == (12, 5000)
    np.testing.assert_allclose(read, signal.T, atol=2e-3)


@pytest.mark.parametrize("rate", [100, 250, 257, 400, 1000])
def test_other_rates_are_resampled_to_the_grid(tmp_path, rate):
    path = write_record(tmp_path, f"r{rate}", sines(rate), rate)
    canonical = load_canonical(path, QCSettings())
    assert canonical.shape == (12, 5000)
    expected = sines(500).T
    np.testing.assert_allclose(canonical[:, 250:-250], expected[:, 250:-250], atol=0.02)


def test_exclusions_name_the_reason(tmp_path):
    settings = QCSettings()
    short = write_record(tmp_path, "short", sines(500, seconds=4), 500)
    with pytest.raises(RecordError, match="4.00 s long, shorter than the 10 s minimum"):
        load_canonical(short, settings)
    eight = write_record(tmp_path, "eight", sines(500, leads=8), 500, leads=LEADS_12[:8])
    with pytest.raises(RecordError, match="missing"):
        read_record(eight)
    with pytest.raises(RecordError, match="header .* does not exist"):
        read_record(tmp_path / "absent")
    flat = sines(500).T.copy()
    flat[3] = 0.0
    assert check_quality(flat, settings) == "flat leads aVR"
    flat[5, 10] = np.nan
    assert check_quality(flat, settings) == "NaN samples in leads aVF"
    assert check_quality(np.zeros((12, 100)), settings) == "all leads flat (peak-to-peak below threshold)"


def test_truncated_data_file_is_a_record_error(tmp_path):
    path = write_record(tmp_path, "cut", sines(500), 500)
    data = path.with_suffix(".dat")
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(RecordError, match="cut"):
        load_canonical(path, QCSettings())


def test_resample_is_identity_at_the_same_rate():
    x = np.random.default_rng(0).standard_normal((2, 100)).astype(np.float32)
    assert resample(x, 500, 500) is x


def test_real_malformed_challenge_records():
    folder = need_shared(DATA / "challenge-samples" / "holdout_data")
    settings = QCSettings(min_seconds=7.0)
    with pytest.raises(RecordError, match="all leads flat"):
        load_canonical(folder / "9190_all_data_is_zero", settings)
    with pytest.raises(RecordError, match="header names record '9190'"):
        load_canonical(folder / "9190_low_sample_rate", settings)
    good = load_canonical(folder / "919003", settings)
    assert good.shape == (12, 5000) and np.isfinite(good).all()
