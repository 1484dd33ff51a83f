"""Reading WFDB records onto the canonical grid, and the quality checks that decide what is kept.

Leads are always mapped by the names in the header, never by position (lead order differs between
corpora), and amplitudes are converted to millivolts from the header's units. Records at another sampling
rate are resampled with a polyphase anti-aliasing filter; records longer than the canonical duration are
cut to its first seconds; records between `min_seconds` and the canonical duration are zero-padded at the
end; anything shorter is excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import wfdb
from scipy.signal import resample_poly

from pipeline.backbones import LEADS_12
from pipeline.errors import RecordError

_LEAD_ALIASES = {name.upper(): name for name in LEADS_12}
_UNIT_TO_MV = {"MV": 1.0, "UV": 1e-3, "µV".upper(): 1e-3, "V": 1e3, "NV": 1e-6}


@dataclass(frozen=True)
class QCSettings:
    """Thresholds of the quality checks (params.yaml `prepare`)."""

    sampling_rate: int = 500
    seconds: float = 10.0
    min_seconds: float = 10.0
    flat_threshold_mv: float = 0.01

    @property
    def samples(self) -> int:
        return int(round(self.sampling_rate * self.seconds))


def lead_order(names: list[str], record: str) -> list[int]:
    """Indices into the record's channels that give the 12 standard leads in LEADS_12 order."""
    positions = {}
    for index, name in enumerate(names):
        canonical = _LEAD_ALIASES.get(str(name).strip().upper())
        if canonical is None:
            raise RecordError(f"{record}: unknown lead name {name!r}; expected the 12 standard leads {list(LEADS_12)}")
        if canonical in positions:
            raise RecordError(f"{record}: lead {canonical} appears twice in the header")
        positions[canonical] = index
    missing = [lead for lead in LEADS_12 if lead not in positions]
    if missing:
        raise RecordError(f"{record}: {len(names)} leads in the header, missing {missing}; 12 standard leads are required")
    return [positions[lead] for lead in LEADS_12]


def read_record(path: Path) -> tuple[np.ndarray, float]:
    """Read a WFDB record as [12, T] float32 millivolts in LEADS_12 order, with its sampling rate."""
    path = Path(path)
    record = str(path)
    if not path.with_suffix(".hea").is_file():
        raise RecordError(f"{record}: header {path.with_suffix('.hea')} does not exist")
    try:
        data = wfdb.rdrecord(record, physical=True, return_res=32)
    except Exception as error:  # wfdb raises ValueError, IndexError, OSError... for bad files
        raise RecordError(f"{record}: cannot read WFDB record ({type(error).__name__}: {error})") from None
    if data.record_name != path.name:
        raise RecordError(f"{record}: the header names record {data.record_name!r}, not {path.name!r}; the header belongs to another record")
    if data.p_signal is None or data.p_signal.ndim != 2 or data.p_signal.shape[0] == 0:
        raise RecordError(f"{record}: the record holds no samples")
    if not data.fs or data.fs <= 0:
        raise RecordError(f"{record}: invalid sampling rate {data.fs!r} in the header")
    order = lead_order(list(data.sig_name or []), record)
    scale = []
    for index in order:
        unit = str(data.units[index] or "mV").strip()
        if unit.upper() not in _UNIT_TO_MV:
            raise RecordError(f"{record}: lead {data.sig_name[index]} has unit {unit!r}; expected mV, uV or V")
        scale.append(_UNIT_TO_MV[unit.upper()])
    signal = data.p_signal[:, order].T.astype(np.float64) * np.asarray(scale)[:, None]
    return signal.astype(np.float32), float(data.fs)


def resample(signal: np.ndarray, from_rate: float, to_rate: float) -> np.ndarray:
    """Resample along the last axis with a polyphase filter (exact rational factor, anti-aliased)."""
    if from_rate == to_rate:
        return signal
    ratio = Fraction(to_rate / from_rate).limit_denominator(1000)
    return resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)


def check_quality(signal: np.ndarray, settings: QCSettings) -> str | None:
    """The reason to exclude a canonical [12, T] signal, or None when it is usable."""
    nan_leads = [lead for lead, row in zip(LEADS_12, signal) if np.isnan(row).any()]
    if nan_leads:
        return f"NaN samples in leads {','.join(nan_leads)}"
    flat = [lead for lead, row in zip(LEADS_12, signal) if np.ptp(row) < settings.flat_threshold_mv]
    if len(flat) == len(LEADS_12):
        return "all leads flat (peak-to-peak below threshold)"
    if flat:
        return f"flat leads {','.join(flat)}"
    return None


def to_canonical(signal: np.ndarray, rate: float, settings: QCSettings, record: str) -> np.ndarray:
    """Resample to the canonical rate and fit to the canonical length (cut, or pad a nearly complete record)."""
    seconds = signal.shape[-1] / rate
    if seconds + 1e-9 < settings.min_seconds:
        raise RecordError(f"{record}: {seconds:.2f} s long, shorter than the {settings.min_seconds:g} s minimum")
    canonical = resample(signal, rate, settings.sampling_rate)[:, : settings.samples]
    if canonical.shape[-1] < settings.samples:
        canonical = np.pad(canonical, ((0, 0), (0, settings.samples - canonical.shape[-1])))
    return np.ascontiguousarray(canonical, dtype=np.float32)


def load_canonical(path: Path, settings: QCSettings) -> np.ndarray:
    """Read, check and resample one record; raise RecordError with the reason when it must be excluded."""
    signal, rate = read_record(path)
    reason = check_quality(signal, settings)
    if reason:
        raise RecordError(f"{path}: {reason}")
    return to_canonical(signal, rate, settings, str(path))
