"""The embedded default corpus: simulated 12-lead, 500 Hz, 10 s WFDB records whose labels the signal determines.

Each subject has a resting heart rate; each of its records varies around it and is either regular or
irregular (large beat-to-beat variability, as in atrial fibrillation). Waveforms come from neurokit2's
ECGSYN-based 12-lead simulator, plus noise and baseline wander. The labels are measured or set, not drawn
independently of the signal:

- `rr_interval` (regression, ms): the mean interval between the R peaks that neurokit2 detects in lead II;
- `irregular` (binary): 1 when the record was simulated with high heart-rate variability;
- `rate_class` (multiclass): brady (< 60 bpm), normal, tachy (> 100 bpm) from the measured RR interval.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dask
import numpy as np
import wfdb

from pipeline.backbones import LEADS_12
from pipeline.manifests import write_manifest

SAMPLING_RATE = 500
SECONDS = 10


def simulate_record(heart_rate: float, irregular: bool, seed: int) -> tuple[np.ndarray, float]:
    """One [5000, 12] millivolt signal and its measured mean RR interval in ms."""
    import neurokit2 as nk  # heavy import, only needed here

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = nk.ecg_simulate(
            duration=SECONDS,
            sampling_rate=SAMPLING_RATE,
            heart_rate=heart_rate,
            heart_rate_std=12.0 if irregular else 1.0,
            method="multileads",
            random_state=seed,
        )
        signal = frame[list(LEADS_12)].to_numpy()
        peaks = nk.ecg_peaks(signal[:, 1], sampling_rate=SAMPLING_RATE)[1]["ECG_R_Peaks"]
    rng = np.random.default_rng(seed)
    time = np.arange(signal.shape[0]) / SAMPLING_RATE
    wander = 0.1 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * time + rng.uniform(0, 2 * np.pi))
    signal = signal * rng.uniform(0.8, 1.2) + wander[:, None] + rng.normal(0, 0.01, signal.shape)
    rr_ms = float(np.mean(np.diff(peaks)) / SAMPLING_RATE * 1000)
    return signal.astype(np.float32), rr_ms


def _write_record(directory: Path, record_id: str, signal: np.ndarray) -> None:
    wfdb.wrsamp(
        record_id,
        fs=SAMPLING_RATE,
        units=["mV"] * len(LEADS_12),
        sig_name=list(LEADS_12),
        p_signal=signal.astype(np.float64),
        fmt=["16"] * len(LEADS_12),
        adc_gain=[1000.0] * len(LEADS_12),
        baseline=[0] * len(LEADS_12),
        write_dir=str(directory),
    )


def _make_one(out: Path, subject: int, index: int, heart_rate: float, irregular: bool, seed: int) -> dict:
    record_id = f"demo{subject:03d}_{index:02d}"
    directory = out / "records" / f"s{subject:03d}"
    directory.mkdir(parents=True, exist_ok=True)
    signal, rr_ms = simulate_record(heart_rate, irregular, seed)
    _write_record(directory, record_id, signal)
    bpm = 60000.0 / rr_ms
    return {
        "record_id": record_id,
        "subject_id": f"subject{subject:03d}",
        "path": f"records/s{subject:03d}/{record_id}",
        "rr_interval": round(rr_ms, 2),
        "irregular": int(irregular),
        "rate_class": "brady" if bpm < 60 else "tachy" if bpm > 100 else "normal",
    }


def make_demo_corpus(out: Path, subjects: int = 40, records_per_subject: int = 6, seed: int = 0, workers: int = 2) -> Path:
    """Write the demo WFDB records and `manifest.jsonl` under `out`; returns the manifest path."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    jobs = []
    for subject in range(subjects):
        resting = rng.uniform(50, 110)
        for index in range(records_per_subject):
            heart_rate = float(np.clip(resting + rng.normal(0, 8), 45, 130))
            irregular = bool(rng.random() < 0.5)
            record_seed = int(rng.integers(0, 2**31 - 1))
            jobs.append(dask.delayed(_make_one)(out, subject, index, heart_rate, irregular, record_seed))
    from pipeline.progress import dask_progress

    with dask_progress("simulating demo ECGs", len(jobs)):
        rows = dask.compute(*jobs, scheduler="processes" if workers > 1 else "sync", num_workers=workers)
    manifest = out / "manifest.jsonl"
    write_manifest(list(rows), manifest)
    return manifest
