"""The embedded default corpus: simulated 12-lead, 500 Hz, 10 s WFDB records whose labels the signal determines.

Each subject has a resting heart rate and its own ECG morphology; each of its records varies around that rate and
is either regular (sinus rhythm) or irregular (atrial-fibrillation-like). The simulator is plain vectorised numpy
(about 2 ms a record), a dipole model of the heart:

- **Rhythm.** Beat (R-peak) times come from an RR sequence. Regular: the record's mean RR with respiratory sinus
  arrhythmia and a little jitter (beat-to-beat variation of about 1-3%). Irregular: independent log-normal RR
  intervals (coefficient of variation 15-30%), no P waves, and fibrillatory waves (4-8 Hz, 0.02-0.08 mV, wandering
  in frequency and amplitude) in their place.
- **Beat.** The heart vector is a sum of Gaussian P, Q, R, S and T waves, each with its own 3-D direction and
  amplitude. QRS widths are fixed per subject; PR shortens a little and QT (Bazett, QTc per subject) shortens at a
  high rate, measured from the preceding RR, so T waves narrow and move in; T is asymmetric (slower upstroke).
  Amplitudes breathe (about 5%) with respiration.
- **Leads.** The vector is projected onto lead I (0 deg) and II (60 deg) of the frontal plane and V1-V6 of the
  horizontal plane; III, aVR, aVL and aVF follow from I and II (Einthoven and Goldberger: III = II - I,
  aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2). Noise and baseline wander are added at the electrodes
  (RA, LA, LL, V1-V6, chest leads against Wilson's central terminal), so the limb-lead relations hold exactly in
  the noisy signal too (up to the 1 uV quantisation of the WFDB file).
- **Variation.** Per subject: QRS axis (15-80 deg), posterior tilt, wave amplitudes and widths, PR, QTc, T and P
  axes, chest-lead gain and electrode angles. Per record: amplitude scaling (0.8-1.2), respiration rate, baseline
  wander (about 0.1 mV, 0.1-0.4 Hz), white noise (about 0.01 mV), and the recording's start phase, chosen so that
  no QRS complex is cut by the edges of the record.

The labels are the simulated truth, readable from the signal:

- `rr_interval` (regression, ms): the mean interval between the simulated R peaks in the record;
- `irregular` (binary): 1 when the record was simulated with the atrial-fibrillation-like rhythm;
- `rate_class` (multiclass): brady (< 60 bpm), normal, tachy (> 100 bpm) from that RR interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.ecg import LEADS_12
from pipeline.manifests import write_manifest, write_tasks

SAMPLING_RATE = 500
SECONDS = 10
TASKS = {  # the demo's labels as tasks (written beside the manifest: params `data.tasks`)
    "rr_interval": {"type": "regression", "label": "rr_interval"},
    "irregular": {"type": "binary", "label": "irregular"},
    "rate_class": {"type": "multiclass", "label": "rate_class", "classes": ["brady", "normal", "tachy"]},
}
EDGE_MARGIN_S = 0.06  # no R peak closer than this to either end of a record (a whole QRS complex is inside)
MIN_RR_S = 0.28  # shortest simulated RR interval (about 215 bpm instantaneous)

_TIME = np.arange(SAMPLING_RATE * SECONDS) / SAMPLING_RATE

# (I, II, V1..V6) from the electrodes (RA, LA, LL, V1..V6); chest leads against Wilson's central terminal
_ELECTRODES_TO_LEADS = np.zeros((8, 9))
_ELECTRODES_TO_LEADS[0, :3] = [-1, 1, 0]  # I = LA - RA
_ELECTRODES_TO_LEADS[1, :3] = [-1, 0, 1]  # II = LL - RA
_ELECTRODES_TO_LEADS[2:, :3] = -1 / 3
_ELECTRODES_TO_LEADS[2:, 3:] = np.eye(6)
# LEADS_12 from (I, II, V1..V6): Einthoven's III and Goldberger's augmented leads
_COMBINATIONS = {"I": (1, 0), "II": (0, 1), "III": (-1, 1), "aVR": (-0.5, -0.5), "aVL": (1, -0.5), "aVF": (-0.5, 1)}
_LEADS_FROM_INDEPENDENT = np.zeros((len(LEADS_12), 8))
for _row, _lead in enumerate(LEADS_12):
    if _lead in _COMBINATIONS:
        _LEADS_FROM_INDEPENDENT[_row, :2] = _COMBINATIONS[_lead]
    else:
        _LEADS_FROM_INDEPENDENT[_row, 2 + int(_lead[1:]) - 1] = 1.0


def _unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=float)
    return vector / np.linalg.norm(vector)


def _frontal(angle_deg: float, anterior: float = 0.0) -> np.ndarray:
    """Unit vector at a hexaxial angle (0 = patient's left, 90 = inferior) tilted forward by `anterior` (sine)."""
    angle = np.deg2rad(angle_deg)
    return _unit([np.cos(angle) * np.sqrt(1 - anterior**2), np.sin(angle) * np.sqrt(1 - anterior**2), anterior])


@dataclass(frozen=True)
class Morphology:
    """One subject's ECG: wave directions (x left, y inferior, z anterior), amplitudes (mV), timings (s)."""

    directions: np.ndarray  # [5, 3] P, Q, R, S, T
    amplitudes: np.ndarray  # [5]
    qrs_sigma: np.ndarray  # [3] Q, R, S widths
    qrs_offset: np.ndarray  # [3] Q, R, S centres relative to the R peak
    p_sigma: float
    pr: float  # P-wave centre before the R peak at RR = 1 s
    qtc: float  # Bazett-corrected QT
    t_sigma: float  # T width at RR = 1 s
    chest_gain: float
    chest_angles: np.ndarray  # [6] V1..V6 in the horizontal plane, degrees from the patient's left towards anterior

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Morphology":
        axis = rng.uniform(15, 80)  # QRS axis: lead II always sees an upright R
        posterior = np.sin(np.deg2rad(rng.uniform(5, 25)))
        directions = np.stack(
            [
                _frontal(rng.uniform(40, 70), 0.1),  # P: atrial depolarisation, left-inferior
                _unit([-0.7, rng.uniform(-0.1, 0.4), 0.7]),  # Q: septum, rightward and anterior
                _frontal(axis, -posterior),  # R: main ventricular vector, left-inferior, a little posterior
                _unit([-0.3, -0.4, -0.85]),  # S: basal, rightward, superior, posterior
                _frontal(axis + rng.normal(0, 10), rng.uniform(0.2, 0.5)),  # T: concordant with R, anterior
            ]
        )
        amplitudes = np.array(
            [rng.uniform(0.12, 0.25), rng.uniform(0.08, 0.25), rng.uniform(1.0, 1.6), rng.uniform(0.2, 0.5),
             rng.uniform(0.2, 0.4)]
        )
        width = rng.uniform(0.85, 1.15)
        return cls(
            directions=directions,
            amplitudes=amplitudes,
            qrs_sigma=width * np.array([0.009, 0.011, 0.010]),
            qrs_offset=width * np.array([-0.026, 0.0, 0.027]),
            p_sigma=rng.uniform(0.02, 0.028),
            pr=rng.uniform(0.13, 0.18),
            qtc=rng.uniform(0.39, 0.44),
            t_sigma=rng.uniform(0.04, 0.05),
            chest_gain=rng.uniform(1.0, 1.5),
            chest_angles=np.array([115.0, 94.0, 76.0, 60.0, 30.0, 0.0]) + rng.normal(0, 4, 6),
        )


@dataclass(frozen=True)
class SimulatedECG:
    signal: np.ndarray  # [5000, 12] float32 mV, LEADS_12 order
    r_peaks: np.ndarray  # R-peak times (s) inside the record
    rr_ms: float  # mean interval between those R peaks


def _rr_sequence(mean_rr: float, irregular: bool, count: int, rng: np.random.Generator, resp_hz: float) -> np.ndarray:
    if irregular:
        spread = rng.uniform(0.15, 0.3)
        factors = rng.lognormal(-spread**2 / 2, spread, count)  # mean 1
        return np.maximum(mean_rr * factors, MIN_RR_S)
    beats = np.cumsum(np.full(count, mean_rr))
    sinus = rng.uniform(0.01, 0.03) * np.sin(2 * np.pi * resp_hz * beats + rng.uniform(0, 2 * np.pi))
    return np.maximum(mean_rr * (1 + sinus + rng.normal(0, 0.01, count)), MIN_RR_S)


def _beat_times(rr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """R-peak times covering [-1.5, SECONDS + 1.5] s at a random phase with no R peak near either record edge."""
    beats = np.cumsum(rr)
    for _ in range(200):
        times = beats - 1.5 - rng.uniform(0, rr[0])
        clear = np.all((np.abs(times) >= EDGE_MARGIN_S) & (np.abs(times - SECONDS) >= EDGE_MARGIN_S))
        if clear and np.sum((times > 0) & (times < SECONDS)) >= 2 and times[-1] >= SECONDS + 1.5:
            return times
    raise RuntimeError("no start phase keeps every R peak clear of the record edges")  # pragma: no cover


def _waves(centres: np.ndarray, left: np.ndarray, right: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """[T] sum over beats of amplitude * exp(-(t - centre)^2 / (2 sigma^2)), sigma = `left` before the centre and
    `right` after it; each beat evaluated only within 5 sigma of its centre (vectorised, a few thousand samples)."""
    half = int(np.ceil(5 * max(left.max(), right.max()) * SAMPLING_RATE))
    index = np.rint(centres * SAMPLING_RATE).astype(np.int64)[:, None] + np.arange(-half, half + 1)[None, :]
    delta = index / SAMPLING_RATE - centres[:, None]
    sigma = np.where(delta < 0, left[:, None], right[:, None])
    values = amplitudes[:, None] * np.exp(-0.5 * (delta / sigma) ** 2)
    keep = (index >= 0) & (index < _TIME.size)
    return np.bincount(index[keep], weights=values[keep], minlength=_TIME.size)


def simulate_ecg(heart_rate: float, irregular: bool, seed: int, morphology: Morphology | None = None) -> SimulatedECG:
    """One simulated record: [5000, 12] mV signal, its R-peak times and mean RR interval (ms)."""
    rng = np.random.default_rng(seed)
    if morphology is None:
        morphology = Morphology.draw(rng)
    t = _TIME
    mean_rr = 60.0 / heart_rate
    resp_hz = rng.uniform(0.15, 0.4)
    count = int(np.ceil((SECONDS + 4.0) / MIN_RR_S))
    rr = _rr_sequence(mean_rr, irregular, count, rng, resp_hz)
    beats = _beat_times(rr, rng)
    beats = beats[beats <= SECONDS + 1.5]
    preceding = np.concatenate([[rr[0]], np.diff(beats)])  # RR before each beat sets its PR and QT
    breathing = 1 + 0.05 * np.sin(2 * np.pi * resp_hz * beats + rng.uniform(0, 2 * np.pi))
    amps = morphology.amplitudes * rng.uniform(0.95, 1.05, 5)
    ones = np.ones_like(beats)

    waves = np.zeros((5, t.size))  # scalar time courses of P, Q, R, S, T
    if not irregular:
        p_sigma = morphology.p_sigma * ones
        waves[0] = _waves(beats - morphology.pr * preceding**0.15, p_sigma, p_sigma, amps[0] * breathing)
    for k in range(3):
        sigma = morphology.qrs_sigma[k] * ones
        waves[1 + k] = _waves(beats + morphology.qrs_offset[k], sigma, sigma, amps[1 + k] * breathing)
    qt = morphology.qtc * np.sqrt(preceding)
    t_sigma = morphology.t_sigma * np.sqrt(preceding)
    t_centre = beats - 0.04 + qt - 2.2 * t_sigma
    waves[4] = _waves(t_centre, 1.4 * t_sigma, t_sigma, amps[4] * breathing)  # slower upstroke than downstroke
    heart = morphology.directions.T @ waves  # [3, T]

    if irregular:  # fibrillatory waves: 4-8 Hz, wandering frequency and amplitude, from an atrial direction
        frequency = np.clip(rng.uniform(4, 8) + np.cumsum(rng.normal(0, 0.02, t.size)), 3.5, 9)
        phase = 2 * np.pi * np.cumsum(frequency) / SAMPLING_RATE + rng.uniform(0, 2 * np.pi)
        envelope = rng.uniform(0.02, 0.08) * (1 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
        f_wave = envelope * (np.sin(phase) + 0.3 * np.sin(2 * phase + rng.uniform(0, 2 * np.pi)))
        heart += _unit([rng.uniform(-0.5, 0.5), 0.6, 0.8])[:, None] * f_wave[None, :]

    heart *= rng.uniform(0.8, 1.2)  # per-record amplitude (electrode contact, body habitus)
    chest_angles = np.deg2rad(morphology.chest_angles)
    chest = np.stack([np.cos(chest_angles), np.full(6, 0.15), np.sin(chest_angles)], axis=1)
    lead_vectors = np.concatenate([np.stack([_frontal(0), _frontal(60)]), morphology.chest_gain * chest])  # [8, 3]

    # electrodes RA, LA, LL, V1..V6: baseline wander (one frequency, each its own amplitude and phase) + white noise
    wander_hz = rng.uniform(0.1, 0.4)
    amplitude, offset = rng.uniform(0.03, 0.08, 9), rng.uniform(0, 2 * np.pi, 9)
    carrier = np.stack([np.sin(2 * np.pi * wander_hz * t), np.cos(2 * np.pi * wander_hz * t)])  # [2, T]
    mixing = np.stack([amplitude * np.cos(offset), amplitude * np.sin(offset)], axis=1)  # [9, 2]
    electrodes = mixing @ carrier + rng.normal(0, 0.007, (9, t.size))

    independent = lead_vectors @ heart + _ELECTRODES_TO_LEADS @ electrodes  # [8, T]: I, II, V1..V6
    signal = np.ascontiguousarray((_LEADS_FROM_INDEPENDENT @ independent).T, dtype=np.float32)  # [T, 12]
    inside = beats[(beats >= 0) & (beats <= SECONDS)]
    rr_ms = float(np.mean(np.diff(inside)) * 1000)
    return SimulatedECG(signal=signal, r_peaks=inside, rr_ms=rr_ms)


def simulate_record(heart_rate: float, irregular: bool, seed: int, morphology: Morphology | None = None) -> tuple[np.ndarray, float]:
    """One [5000, 12] millivolt signal and its mean RR interval in ms (between the simulated R peaks)."""
    ecg = simulate_ecg(heart_rate, irregular, seed, morphology)
    return ecg.signal, ecg.rr_ms


def _write_record(directory: Path, record_id: str, signal: np.ndarray) -> None:
    """The WFDB record `wfdb.wrsamp` writes (fmt 16, gain 1000/mV, baseline 0, byte for byte), without its
    per-call header machinery (~150 ms a record, most of the corpus's time)."""
    digital = np.round(signal.astype(np.float64) * 1000.0).astype(np.int64)
    if digital.min() <= -32768 or digital.max() > 32767:  # -32768 is fmt 16's missing-sample value
        raise ValueError(f"{record_id}: signal outside the fmt 16 range at gain 1000/mV")
    (directory / f"{record_id}.dat").write_bytes(digital.astype("<i2").tobytes())
    checksums = digital.sum(axis=0) % 65536
    lines = [f"{record_id} {len(LEADS_12)} {SAMPLING_RATE} {digital.shape[0]}"]
    lines += [
        f"{record_id}.dat 16 1000.0(0)/mV 16 0 {digital[0, j]} {checksums[j]} 0 {name}" for j, name in enumerate(LEADS_12)
    ]
    (directory / f"{record_id}.hea").write_text("\n".join(lines) + "\n")


def _make_one(out: Path, subject: int, index: int, heart_rate: float, irregular: bool, seed: int, morphology: Morphology) -> dict:
    record_id = f"demo{subject:03d}_{index:02d}"
    directory = out / "records" / f"s{subject:03d}"
    directory.mkdir(parents=True, exist_ok=True)
    signal, rr_ms = simulate_record(heart_rate, irregular, seed, morphology)
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
    """Write the demo WFDB records, `manifest.jsonl` and its `manifest.tasks.yaml` under `out`; returns the manifest path.

    Runs in-process (a record takes a few milliseconds to simulate and write, less than process start-up);
    `workers` is accepted for compatibility and unused.
    """
    del workers
    out = Path(out)
    rng = np.random.default_rng(seed)
    jobs = []
    for subject in range(subjects):
        resting = rng.uniform(50, 110)
        morphology = Morphology.draw(np.random.default_rng([seed, subject, 1]))  # own stream: rates stay as drawn
        for index in range(records_per_subject):
            heart_rate = float(np.clip(resting + rng.normal(0, 8), 45, 130))
            irregular = bool(rng.random() < 0.5)
            record_seed = int(rng.integers(0, 2**31 - 1))
            jobs.append((subject, index, heart_rate, irregular, record_seed, morphology))
    from pipeline.progress import progress_bar

    rows = []
    with progress_bar("simulating demo ECGs", len(jobs)) as advance:
        for job in jobs:
            rows.append(_make_one(out, *job))
            advance()
    manifest = out / "manifest.jsonl"
    write_tasks(TASKS, manifest)
    write_manifest(rows, manifest)
    return manifest
