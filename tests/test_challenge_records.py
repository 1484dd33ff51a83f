"""PhysioNet/CinC Challenge 2020/2021 records as distributed: MATLAB v4 `.mat` signal files (WFDB format `16+24`),
including the Georgia set's headers, whose record line names the record by its signal file (`E00001.mat 12 500 ...`).

The records are written here in that exact form: the .mat by scipy.io.savemat(format="4") (one int16 matrix
`val` [12, N], a 24-byte MATLAB header), the .hea line by line as the challenge writes it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pipeline.errors import RecordError
from pipeline.stage_one.backbones import LEADS_12
from pipeline.stage_one.signals import QCSettings, load_canonical, read_record

CHALLENGE_LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def samples(count: int, seed: int = 0) -> np.ndarray:
    """int16 [12, count]: a different sine per lead plus noise, in ADC units (gain 1000/mV: +-2 mV)."""
    rng = np.random.default_rng(seed)
    time = np.arange(count) / 500
    waves = np.stack([800 * np.sin(2 * np.pi * (1 + lead) * time) for lead in range(12)])
    return np.round(waves + rng.normal(0, 50, waves.shape)).astype(np.int16)


def write_mat(path: Path, val: np.ndarray) -> None:
    scipy.io.savemat(path, {"val": val}, format="4")


def challenge_header(name: str, val: np.ndarray, record_line_name: str, gain: float = 1000, fs: int = 500,
                     signal_file: str | None = None, leads=CHALLENGE_LEADS) -> str:
    """The challenge's header: record line (date before time, as the challenge writes it), then per lead
    `FILE 16+24 GAIN/mV 16 0 FIRST CHECKSUM 0 LEAD`, then the #Age/#Sex/#Dx comments."""
    signal_file = signal_file or f"{name}.mat"
    lines = [f"{record_line_name} {len(leads)} {fs} {val.shape[1]} 05-May-2020 14:50:55"]
    for row, lead in zip(val, leads):
        checksum = int(row.astype(np.int64).sum() % 65536)
        checksum = checksum - 65536 if checksum > 32767 else checksum  # WFDB's 16-bit signed checksum
        lines.append(f"{signal_file} 16+24 {gain:g}/mV 16 0 {int(row[0])} {checksum} 0 {lead}")
    lines += ["#Age: 62", "#Sex: Female", "#Dx: 426783006", "#Rx: Unknown", "#Hx: Unknown", "#Sx: Unknown"]
    return "\n".join(lines) + "\n"


def write_record(folder: Path, name: str, val: np.ndarray, mat_suffix: bool, **header) -> Path:
    write_mat(folder / f"{name}.mat", val)
    record_line_name = f"{name}.mat" if mat_suffix else name
    (folder / f"{name}.hea").write_text(challenge_header(name, val, record_line_name, **header))
    return folder / name


def test_savemat_v4_writes_the_challenges_24_byte_layout(tmp_path):
    """type 30 (little-endian int16 full matrix), 12 rows, N columns, real, name 'val' + NUL: then the samples,
    column-major, i.e. WFDB format 16 frames (one sample of every lead) from byte 24."""
    val = samples(5000)
    write_mat(tmp_path / "E00001.mat", val)
    data = (tmp_path / "E00001.mat").read_bytes()
    assert struct.unpack("<5i", data[:20]) == (30, 12, 5000, 0, 4) and data[20:24] == b"val\x00"
    assert len(data) == 24 + 2 * 12 * 5000
    np.testing.assert_array_equal(np.frombuffer(data[24:], "<i2").reshape(5000, 12).T, val)


@pytest.mark.parametrize("mat_suffix", [True, False], ids=["georgia_record_line", "plain_record_line"])
@pytest.mark.parametrize("gain", [1000, 4880])
def test_challenge_record_reads_exactly(tmp_path, mat_suffix, gain):
    val = samples(5000)
    path = write_record(tmp_path, "E00001", val, mat_suffix, gain=gain)
    signal, fs = read_record(path)
    assert fs == 500.0 and signal.shape == (12, 5000) and signal.dtype == np.float32
    np.testing.assert_allclose(signal, (val / gain).astype(np.float32), rtol=1e-6, atol=0)
    canonical = load_canonical(path, QCSettings())  # 500 Hz x 10 s: the canonical grid already
    np.testing.assert_array_equal(canonical, signal)


def test_leads_are_taken_by_name_in_challenge_records(tmp_path):
    val = samples(5000)
    order = [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]  # V1..V6 first
    path = tmp_path / "E00007"
    write_mat(tmp_path / "E00007.mat", val[order])
    header = challenge_header("E00007", val[order], "E00007.mat", leads=[CHALLENGE_LEADS[i] for i in order])
    (tmp_path / "E00007.hea").write_text(header)
    signal, _ = read_record(path)
    assert list(LEADS_12) == CHALLENGE_LEADS
    np.testing.assert_allclose(signal, (val / 1000).astype(np.float32), rtol=1e-6, atol=0)


def test_both_record_line_forms_read_the_same_and_other_rates_resample(tmp_path):
    val = samples(2500)  # 10 s at 250 Hz
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    georgia = write_record(tmp_path / "a", "E00002", val, True, fs=250)
    plain = write_record(tmp_path / "b", "E00002", val, False, fs=250)
    (a, rate_a), (b, rate_b) = read_record(georgia), read_record(plain)
    assert rate_a == rate_b == 250.0
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(load_canonical(georgia, QCSettings()), load_canonical(plain, QCSettings()))
    assert load_canonical(georgia, QCSettings()).shape == (12, 5000)


def test_a_long_challenge_record_is_read_only_as_far_as_needed(tmp_path):
    val = samples(15000)  # 30 s
    path = write_record(tmp_path, "E00003", val, True)
    part, _ = read_record(path, max_seconds=11.0)
    whole, _ = read_record(path)
    assert part.shape == (12, 5500) and whole.shape == (12, 15000)
    np.testing.assert_array_equal(part, whole[:, :5500])


def test_a_header_naming_another_record_is_still_refused(tmp_path):
    val = samples(5000)
    write_mat(tmp_path / "E00001.mat", val)
    header = tmp_path / "E00001.hea"
    header.write_text(challenge_header("E00001", val, "E00002.mat"))
    with pytest.raises(RecordError, match=r"the header names record 'E00002\.mat', not 'E00001'; the header belongs to another record"):
        read_record(tmp_path / "E00001")
    header.write_text(challenge_header("E00001", val, "E00002"))
    with pytest.raises(RecordError, match=r"the header names record 'E00002', not 'E00001'"):
        load_canonical(tmp_path / "E00001", QCSettings())
    # the record line names this record's .mat, but the signal lines read another record's file
    write_mat(tmp_path / "E00002.mat", val)
    header.write_text(challenge_header("E00001", val, "E00001.mat", signal_file="E00002.mat"))
    with pytest.raises(RecordError, match=r"names 'E00001\.mat'.*signal lines read \['E00002\.mat'\]; the header belongs to another record"):
        read_record(tmp_path / "E00001")


def test_a_mat_file_not_in_the_challenges_layout_is_refused(tmp_path):
    val = samples(5000)
    path = write_record(tmp_path, "E00004", val, True)
    scipy.io.savemat(tmp_path / "E00004.mat", {"val": val.T.copy()}, format="4")  # [N, 12]: frames would be wrong
    with pytest.raises(RecordError, match=r"holds a 5000 x 12 matrix; the header needs 12 signals"):
        read_record(path)
    scipy.io.savemat(tmp_path / "E00004.mat", {"val": val.astype(np.float64)}, format="4")  # doubles, not int16
    with pytest.raises(RecordError, match=r"not a MATLAB v4 little-endian real int16 matrix \(type 0"):
        read_record(path)
    scipy.io.savemat(tmp_path / "E00004.mat", {"signal": val}, format="4")  # a longer name: samples from byte 27
    with pytest.raises(RecordError, match=r"start at byte 27 .* byte offset is 24"):
        read_record(path)
    write_mat(tmp_path / "E00004.mat", val)
    (tmp_path / "E00004.mat").write_bytes((tmp_path / "E00004.mat").read_bytes()[:30000])
    with pytest.raises(RecordError, match=r"E00004\.mat is truncated: 30000 bytes, the header needs 120024"):
        read_record(path)


@pytest.mark.parametrize("mat_suffix", [True, False], ids=["georgia_record_line", "plain_record_line"])
def test_a_header_with_fewer_signal_lines_than_it_declares_is_refused(tmp_path, mat_suffix):
    val = samples(5000)
    path = write_record(tmp_path, "E00005", val, mat_suffix)
    header = tmp_path / "E00005.hea"
    lines = header.read_text().splitlines(keepends=True)
    header.write_text(lines[0] + "".join(lines[13:]))  # the record line and the comments: no signal lines
    with pytest.raises(RecordError, match=r"the header declares 12 signals but has 0 signal lines"):
        read_record(path)
    header.write_text("".join(lines[:7] + lines[13:]))
    with pytest.raises(RecordError, match=r"the header declares 12 signals but has 6 signal lines"):
        read_record(path)
