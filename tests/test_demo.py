"""The demo corpus simulator: WFDB output, labels read back from the signal, rhythm, lead relations, determinism, speed."""

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import wfdb
from scipy.signal import butter, find_peaks, sosfiltfilt

from pipeline.ecg import LEADS_12
from pipeline.stage_one.demo import Morphology, _write_record, make_demo_corpus, simulate_ecg

FS = 500
LEAD = {name: j for j, name in enumerate(LEADS_12)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The default demo corpus (40 subjects x 6 records), its manifest rows, and the CPU seconds it took."""
    out = tmp_path_factory.mktemp("demo")
    start = time.process_time()  # this process's CPU time: one core, unaffected by other jobs on the machine
    manifest = make_demo_corpus(out, subjects=40, records_per_subject=6, seed=0)
    cpu_s = time.process_time() - start
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return out, rows, cpu_s


@pytest.fixture(scope="module")
def records(corpus):
    out, rows, _ = corpus
    return [wfdb.rdrecord(str(out / row["path"])) for row in rows]


def detect_r_peaks(lead_ii: np.ndarray) -> np.ndarray:
    """A simple R-peak detector: 0.5 Hz high-pass, then peaks above half the maximum, at least 200 ms apart."""
    filtered = sosfiltfilt(butter(2, 0.5, "highpass", fs=FS, output="sos"), lead_ii)
    peaks, _ = find_peaks(filtered, height=0.5 * filtered.max(), distance=int(0.2 * FS))
    return peaks


def rr_of(record) -> np.ndarray:
    return np.diff(detect_r_peaks(record.p_signal[:, LEAD["II"]])) / FS * 1000


def test_simulating_and_writing_the_default_corpus_takes_under_5_cpu_seconds(corpus):
    _, rows, cpu_s = corpus
    assert len(rows) == 240
    assert cpu_s < 5.0, f"240 records took {cpu_s:.1f} CPU s"


def test_manifest_has_the_subject_record_structure_and_consistent_labels(corpus):
    out, rows, _ = corpus
    assert [set(row) for row in rows] == [{"record_id", "subject_id", "path", "rr_interval", "irregular", "rate_class"}] * 240
    assert Counter(row["subject_id"] for row in rows) == {f"subject{s:03d}": 6 for s in range(40)}
    assert len({row["record_id"] for row in rows}) == 240
    for row in rows:
        assert (out / f"{row['path']}.hea").is_file() and (out / f"{row['path']}.dat").is_file()
        bpm = 60000 / row["rr_interval"]
        assert row["rate_class"] == ("brady" if bpm < 60 else "tachy" if bpm > 100 else "normal")
        assert row["irregular"] in (0, 1)
    assert set(Counter(row["rate_class"] for row in rows)) == {"brady", "normal", "tachy"}
    assert 0.35 < np.mean([row["irregular"] for row in rows]) < 0.65


def test_records_read_back_as_12_lead_500_hz_10_s_millivolt_wfdb(records):
    for record in records:
        assert record.fs == FS and record.sig_len == 5000 and record.n_sig == 12
        assert record.sig_name == list(LEADS_12)
        assert record.units == ["mV"] * 12 and record.fmt == ["16"] * 12 and record.adc_gain == [1000.0] * 12
        assert record.p_signal.shape == (5000, 12) and np.isfinite(record.p_signal).all()
        assert np.ptp(record.p_signal, axis=0).min() > 0.05  # no flat lead (prepare's QC would exclude it)


def test_writer_is_byte_identical_to_wfdb_wrsamp(tmp_path):
    for seed, (rate, irregular) in enumerate([(55.0, False), (120.0, True)]):
        signal = simulate_ecg(rate, irregular, seed).signal
        ours, theirs = tmp_path / f"ours{seed}", tmp_path / f"wfdb{seed}"
        ours.mkdir(), theirs.mkdir()
        _write_record(ours, "rec", signal)
        wfdb.wrsamp("rec", fs=FS, units=["mV"] * 12, sig_name=list(LEADS_12), p_signal=signal.astype(np.float64),
                    fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(theirs))
        for suffix in (".hea", ".dat"):
            assert (ours / f"rec{suffix}").read_bytes() == (theirs / f"rec{suffix}").read_bytes()


def test_rr_label_matches_the_r_peaks_detected_in_lead_ii(corpus, records):
    _, rows, _ = corpus
    errors = [abs(rr_of(record).mean() - row["rr_interval"]) for row, record in zip(rows, records)]
    assert max(errors) < 2.0, f"worst |detected - label| = {max(errors):.2f} ms"


def test_detected_peaks_are_the_simulated_r_peaks():
    for seed, (rate, irregular) in enumerate([(46.0, False), (75.0, True), (128.0, True), (128.0, False)]):
        ecg = simulate_ecg(rate, irregular, seed)
        detected = detect_r_peaks(ecg.signal[:, LEAD["II"]].astype(np.float64))
        assert len(detected) == len(ecg.r_peaks)
        assert np.abs(detected / FS - ecg.r_peaks).max() < 0.004
        assert ecg.rr_ms == pytest.approx(np.diff(ecg.r_peaks).mean() * 1000)


def test_irregular_records_have_clearly_higher_rr_variability(corpus, records):
    _, rows, _ = corpus
    cv = {0: [], 1: []}
    for row, record in zip(rows, records):
        rr = rr_of(record)
        cv[row["irregular"]].append(rr.std() / rr.mean())
    assert np.median(cv[0]) < 0.03 and np.median(cv[1]) > 0.15
    assert min(cv[1]) > max(cv[0]), "every irregular record varies more than every regular one"


def test_limb_leads_follow_einthoven_and_goldberger(records):
    tolerance = 0.002  # mV: three values each rounded to the file's 1 uV
    for record in records[:60]:
        x = {name: record.p_signal[:, j] for name, j in LEAD.items()}
        assert np.abs(x["III"] - (x["II"] - x["I"])).max() <= tolerance
        assert np.abs(x["aVR"] + (x["I"] + x["II"]) / 2).max() <= tolerance
        assert np.abs(x["aVL"] - (x["I"] - x["II"] / 2)).max() <= tolerance
        assert np.abs(x["aVF"] - (x["II"] - x["I"] / 2)).max() <= tolerance


def test_qt_shortens_at_a_high_rate():
    """The lead-II T-wave peak follows the R peak sooner at 125 bpm than at 50 bpm (same subject)."""
    morphology = Morphology.draw(np.random.default_rng(7))

    def r_to_t_peak(rate: float) -> float:
        ecg = simulate_ecg(rate, False, 1, morphology)
        lead = ecg.signal[:, LEAD["II"]]
        delays = []
        for r in ecg.r_peaks[:-1]:
            start = int(r * FS) + int(0.08 * FS)
            window = lead[start:int((r + 0.5 * 60 / rate) * FS) + int(0.1 * FS)]
            delays.append((start + np.argmax(window)) / FS - r)
        return float(np.median(delays))

    assert r_to_t_peak(125) < r_to_t_peak(50) - 0.05


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    def files(folder: Path) -> dict:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_demo_corpus(tmp_path / name, subjects=4, records_per_subject=2, seed=seed)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert (tmp_path / "a" / "manifest.jsonl").read_text() != (tmp_path / "c" / "manifest.jsonl").read_text()
    assert files(tmp_path / "a").keys() == files(tmp_path / "c").keys()
