"""Reading WFDB records onto the canonical grid, and the quality checks that decide what is kept.

Leads are always mapped by the names in the header, never by position (lead order differs between
corpora); leads beyond the standard 12 (e.g. PTB's Frank leads vx, vy, vz) are ignored, a missing standard
lead excludes the record. Amplitudes are converted to millivolts from the header's units (mV, uV, V, nV);
any other unit excludes the record. Records at another sampling rate are resampled with a polyphase
anti-aliasing filter; rates outside 50-20,000 Hz are refused (below 50 Hz no QRS survives; no ECG is
recorded faster, and the bound also caps the resampling cost). Records longer than the canonical duration
are cut to its first seconds (only those are read); records between `min_seconds` and the canonical
duration are zero-padded at the end; anything shorter is excluded.

The header is checked before any sample is read: a header naming another record, a sampling rate, length
or gain field that is not a number (wfdb would silently use WFDB's defaults), a missing signal file, or a
signal file shorter than the header's length (a truncated copy) is a RecordError with that reason, never
a read of garbage or a huge allocation from a corrupt length field. Every failure to read a record
is a RecordError; anything else escaping `read_record` is a bug (tests/test_fuzz.py looks for them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

from pipeline.ecg import LEADS_12, resample
from pipeline.errors import RecordError

_LEAD_ALIASES = {name.upper(): name for name in LEADS_12}
_UNIT_TO_MV = {"MV": 1.0, "UV": 1e-3, "µV".upper(): 1e-3, "V": 1e3, "NV": 1e-6}
RATE_RANGE_HZ = (50.0, 20_000.0)
# Bytes per sample of WFDB's uncompressed signal formats (212 packs 2 samples in 3 bytes, 310/311 3 in 4);
# the FLAC formats 508/516/524 have no fixed size and are left to wfdb.
_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5, "310": 4 / 3, "311": 4 / 3}
_COMPRESSED_FORMATS = ("508", "516", "524")
# wfdb parses header fields with regexes that stop at the first unexpected character and fall back to
# WFDB's defaults (250 Hz, gain 200): "12 nan 4096" reads as 250 Hz, "1e3" as 1 Hz. The fields that set
# the time and amplitude scales are therefore checked as written.
_RATE_FIELD = re.compile(r"(\d+\.?\d*|\.\d+)(/[-\d.]*(\([-\d.]*\))?)?")  # fs[/counter_freq[(base_counter)]]
_GAIN_FIELD = re.compile(r"-?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?(\(-?\d+\))?(/.*)?")  # gain[(baseline)][/units]


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
    positions, unknown = {}, []
    for index, name in enumerate(names):
        canonical = _LEAD_ALIASES.get(str(name).strip().upper())
        if canonical is None:
            unknown.append(str(name))
        elif canonical in positions:
            raise RecordError(f"{record}: lead {canonical} appears twice in the header")
        else:
            positions[canonical] = index
    missing = [lead for lead in LEADS_12 if lead not in positions]
    if missing:
        others = f" and unknown leads {unknown}" if unknown else ""
        raise RecordError(f"{record}: {len(names)} leads in the header, missing {missing}{others}; the 12 standard leads are required")
    return [positions[lead] for lead in LEADS_12]


def _read_header(path: Path) -> wfdb.Record | wfdb.MultiRecord:
    """The parsed header, checked for what would make reading its samples wrong or dangerous."""
    record = str(path)
    header_file = path.with_name(path.name + ".hea")
    if not header_file.is_file():
        raise RecordError(f"{record}: header {header_file} does not exist")
    try:
        header = wfdb.rdheader(record)
    except Exception as error:  # wfdb raises HeaderSyntaxError, ValueError, IndexError... for a bad header
        raise RecordError(f"{record}: unreadable header ({type(error).__name__}: {error})") from None
    if header.record_name != path.name:
        raise RecordError(f"{record}: the header names record {header.record_name!r}, not {path.name!r}; the header belongs to another record")
    _check_scale_fields(header_file.read_bytes().decode("utf-8", errors="replace"), header, record)
    fs = header.fs
    if not isinstance(fs, (int, float)) or not RATE_RANGE_HZ[0] <= fs <= RATE_RANGE_HZ[1]:  # also refuses NaN
        raise RecordError(f"{record}: sampling rate {fs!r} Hz in the header is outside the supported {RATE_RANGE_HZ[0]:g}-{RATE_RANGE_HZ[1]:g} Hz")
    if not header.n_sig:
        raise RecordError(f"{record}: the header declares no signals")
    if not isinstance(header, wfdb.MultiRecord):  # each segment of a multi-segment record is its own record
        _check_signal_files(header, path)
    return header


def _check_scale_fields(text: str, header: wfdb.Record | wfdb.MultiRecord, record: str) -> None:
    """The sampling rate, length and gains are written as numbers (see _RATE_FIELD), never left to a default."""
    lines = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    fields = lines[0]
    if len(fields) < 3 or not _RATE_FIELD.fullmatch(fields[2]):
        stated = repr(fields[2]) if len(fields) > 2 else "missing"
        raise RecordError(f"{record}: the sampling rate field in the header is {stated}, not a number (wfdb would assume {header.fs!r} Hz)")
    if len(fields) > 3 and not fields[3].isdigit():
        raise RecordError(f"{record}: the length field {fields[3]!r} in the header is not a whole number")
    if isinstance(header, wfdb.MultiRecord):  # segment lines, not signal lines, follow
        return
    for fields in lines[1 : 1 + header.n_sig]:
        if len(fields) > 2 and not _GAIN_FIELD.fullmatch(fields[2]):
            raise RecordError(f"{record}: the gain field {fields[2]!r} of signal {fields[-1]!r} is not a number")


def _check_signal_files(header: wfdb.Record, path: Path) -> None:
    """Every signal file exists and holds the samples the header promises; no skew beyond the record."""
    for name in dict.fromkeys(header.file_name):
        file = path.parent / name
        if not file.is_file():
            raise RecordError(f"{path}: signal file {file} does not exist")
        channels = [i for i, other in enumerate(header.file_name) if other == name]
        fmt = str(header.fmt[channels[0]])
        if fmt in _COMPRESSED_FORMATS:  # no fixed size per sample
            continue
        if fmt not in _BYTES_PER_SAMPLE:
            raise RecordError(f"{path}: unsupported WFDB signal format {fmt!r}")
        frame = sum(header.samps_per_frame[i] or 1 for i in channels) * _BYTES_PER_SAMPLE[fmt]
        offset, size = header.byte_offset[channels[0]] or 0, file.stat().st_size
        length = header.sig_len if header.sig_len is not None else max(0, int((size - offset) / frame))  # as wfdb infers it
        if size < offset + int(length * frame):
            raise RecordError(f"{path}: signal file {file.name} is truncated: {size} bytes, the header needs {offset + int(length * frame)}")
        skew = max(header.skew[i] or 0 for i in channels)  # wfdb allocates the skew on top of the length
        if skew > length:
            raise RecordError(f"{path}: skew of {skew} samples in the header is longer than the record ({length} samples)")


def read_record(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, float]:
    """Read a WFDB record as [12, T] float32 millivolts in LEADS_12 order, with its sampling rate.

    With `max_seconds`, only that many seconds from the start are read (a long record is cut anyway).
    """
    path = Path(path)
    record = str(path)
    header = _read_header(path)
    sampto = None
    if max_seconds is not None and header.sig_len:
        sampto = min(header.sig_len, int(np.ceil(header.fs * max_seconds)))
    try:  # an absurd gain in the header gives inf samples, which QC then excludes
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            data = wfdb.rdrecord(record, sampto=sampto, physical=True, return_res=32)
    except Exception as error:  # wfdb raises ValueError, IndexError, OSError... for bad files
        raise RecordError(f"{record}: cannot read WFDB record ({type(error).__name__}: {error})") from None
    if data.p_signal is None or data.p_signal.ndim != 2 or data.p_signal.shape[0] == 0:
        raise RecordError(f"{record}: the record holds no samples")
    order = lead_order(list(data.sig_name or []), record)
    scale = []
    for index in order:
        unit = str(data.units[index] or "mV").strip()
        if unit.upper() not in _UNIT_TO_MV:
            raise RecordError(f"{record}: lead {data.sig_name[index]} has unit {unit!r}; expected mV, uV, V or nV")
        scale.append(_UNIT_TO_MV[unit.upper()])
    with np.errstate(over="ignore", invalid="ignore"):
        signal = (data.p_signal[:, order].T.astype(np.float64) * np.asarray(scale)[:, None]).astype(np.float32)
    return signal, float(data.fs)


def check_quality(signal: np.ndarray, settings: QCSettings) -> str | None:
    """The reason to exclude a canonical [12, T] signal, or None when it is usable."""
    nan_leads = [lead for lead, row in zip(LEADS_12, signal) if np.isnan(row).any()]
    if nan_leads:
        return f"NaN samples in leads {','.join(nan_leads)}"
    infinite = [lead for lead, row in zip(LEADS_12, signal) if np.isinf(row).any()]
    if infinite:
        return f"infinite samples in leads {','.join(infinite)}"
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
    """Read, check and resample one record; raise RecordError with the reason when it must be excluded.

    One second more than the canonical duration is read, so that the resampling filter near the cut sees
    the samples that follow it, exactly as if the whole record had been resampled.
    """
    signal, rate = read_record(path, max_seconds=settings.seconds + 1.0)
    reason = check_quality(signal, settings)
    if reason:
        raise RecordError(f"{path}: {reason}")
    return to_canonical(signal, rate, settings, str(path))
