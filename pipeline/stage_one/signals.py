"""Reading WFDB records onto the canonical grid, and the quality checks that decide what is kept.

Leads are always mapped by the names in the header, never by position (lead order differs between
corpora); leads beyond the standard 12 (e.g. PTB's Frank leads vx, vy, vz) are ignored, a missing standard
lead excludes the record. Amplitudes are converted to millivolts from the header's units (mV, uV, V, nV);
any other unit excludes the record. Records at another sampling rate are resampled with a polyphase
anti-aliasing filter; rates outside 50-20,000 Hz are refused (below 50 Hz no QRS survives; no ECG is
recorded faster, and the bound also caps the resampling cost). Records longer than the canonical duration
are cut to its first seconds (only those are read); records between `min_seconds` and the canonical
duration are zero-padded at the end; anything shorter is excluded.

Headers in the form that ECG corpora are written in (PTB-XL, MIMIC-IV-ECG, CODE-15) are parsed, and the
samples of their plain integer formats read, by `fast_wfdb`, which gives exactly wfdb's header fields and
samples in a fraction of wfdb's time per record; wfdb (rdheader, rdrecord) reads everything else.

The header is checked before any sample is read: a header naming another record, one with another number
of signal lines than the signals it declares, a sampling rate, length or gain field that is not a number
(wfdb would silently use WFDB's defaults), a missing signal file, or a signal file shorter than the
header's length (a truncated copy) is a RecordError with that reason, never
a read of garbage or a huge allocation from a corrupt length field. Every failure to read a record
is a RecordError; anything else escaping `read_record` is a bug (tests/test_fuzz.py looks for them).

PhysioNet/CinC Challenge 2020/2021 records are read as distributed: the samples are in a MATLAB v4 file
`E00001.mat` (one int16 matrix `val` [leads, samples], after a 24-byte MATLAB header), which the signal
lines give as format `16+24` (format 16 from byte 24). The 20-byte MATLAB header of every `.mat` signal
file is checked against the header (int16 or int32 little-endian for format 16 or 32, one row per
signal, at least the header's length of columns, samples starting at the stated byte offset), so a .mat
saved another way is refused rather than read as noise. Some of the challenge's sets (Georgia's) name
the record on the record line by its signal file, `E00001.mat 12 500 5000 ...`, which WFDB's syntax
(and wfdb.rdheader) does not allow; such a header is accepted when that name is the record's own file
stem + `.mat` and every signal line reads that .mat file: the header text is then parsed in memory by
wfdb's own header parser with the record name restored to the stem, and the samples read by wfdb's own
reader from the .mat file (nothing is copied or written). A record line that names another record, with
or without `.mat`, is still refused as the header of another record.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb
from wfdb.io import _header as wfdb_header_fields
from wfdb.io import _signal as wfdb_signal
from wfdb.io.header import parse_header_content

from pipeline.ecg import LEADS_12, resample
from pipeline.errors import RecordError
from pipeline.stage_one import fast_wfdb

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
# The record line of some PhysioNet/CinC challenge headers names the signal file: `E00001.mat 12 500 5000 ...`.
_MAT_RECORD_NAME = re.compile(r"[-\w]+\.mat")
# MATLAB v4 matrix type (MOPT) that holds each WFDB format's samples: little-endian (M 0), full numeric (T 0),
# int16 (P 3) for format 16, int32 (P 2) for format 32. A v4 header is 5 int32 (type, rows, columns,
# imaginary flag, name length) followed by the variable's name, NUL included.
_MAT_V4_TYPES = {"16": (30, "int16"), "32": (20, "int32")}


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


def _record_line_name(text: str) -> str | None:
    """The first field of the header's record line (its first line that is neither blank nor a comment)."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line.split()[0]
    return None


def _parse_challenge_header(text: str, path: Path, named: str) -> wfdb.Record:
    """A challenge header whose record line names the signal file (`E00001.mat 12 500 ...`), parsed in memory.

    wfdb.rdheader refuses a `.` in the record name ("invalid syntax in record line"); this runs the same
    parsers as rdheader on the header's text (read as rdheader reads it) with the record name set back to
    the file stem. The caller has checked that `named` is `path.name + ".mat"`.
    """
    lines, comments = parse_header_content(text)
    record_line = lines[0]
    lines[0] = path.name + record_line[record_line.index(named) + len(named) :]
    fields = wfdb_header_fields._parse_record_line(lines[0])
    header = wfdb.Record()
    if len(lines) > 1:
        for field, value in wfdb_header_fields._parse_signal_lines(lines[1:]).items():
            setattr(header, field, value)
    for field, value in fields.items():
        if field != "n_seg":  # the stem holds no '/': a single-segment record
            setattr(header, field, value)
    header.comments = [line.strip(" \t#") for line in comments]
    return header


def _read_header(path: Path) -> tuple[wfdb.Record | wfdb.MultiRecord, bool]:
    """The parsed header, checked for what would make reading its samples wrong or dangerous, and whether
    it is in the challenge form whose record line names the .mat signal file (see the module docstring)."""
    record = str(path)
    header_file = path.with_name(path.name + ".hea")
    if not header_file.is_file():
        raise RecordError(f"{record}: header {header_file} does not exist")
    raw = header_file.read_bytes()
    text = raw.decode("ascii", errors="ignore")  # as wfdb reads the header
    named = _record_line_name(text)
    challenge_form = named is not None and named != path.name and _MAT_RECORD_NAME.fullmatch(named) is not None
    if challenge_form and named != path.name + ".mat":
        raise RecordError(f"{record}: the header names record {named!r}, not {path.name!r}; the header belongs to another record")
    header = None if challenge_form else fast_wfdb.parse_header(text)
    try:  # wfdb for anything the fast parser does not take
        if header is None:
            header = _parse_challenge_header(text, path, named) if challenge_form else wfdb.rdheader(record)
    except Exception as error:  # wfdb raises HeaderSyntaxError, ValueError, IndexError... for a bad header
        raise RecordError(f"{record}: unreadable header ({type(error).__name__}: {error})") from None
    if header.record_name != path.name:
        raise RecordError(f"{record}: the header names record {header.record_name!r}, not {path.name!r}; the header belongs to another record")
    if not isinstance(header, wfdb.MultiRecord) and header.n_sig and len(header.file_name or []) != header.n_sig:
        raise RecordError(f"{record}: the header declares {header.n_sig} signals but has {len(header.file_name or [])} signal lines")
    if challenge_form and header.n_sig and set(header.file_name) != {named}:
        others = sorted(set(header.file_name) - {named})
        raise RecordError(
            f"{record}: the record line names {named!r}, the challenge form for a record stored in that file, but "
            f"its signal lines read {others}; the header belongs to another record"
        )
    _check_scale_fields(raw.decode("utf-8", errors="replace"), header, record)
    fs = header.fs
    if not isinstance(fs, (int, float)) or not RATE_RANGE_HZ[0] <= fs <= RATE_RANGE_HZ[1]:  # also refuses NaN
        raise RecordError(f"{record}: sampling rate {fs!r} Hz in the header is outside the supported {RATE_RANGE_HZ[0]:g}-{RATE_RANGE_HZ[1]:g} Hz")
    if not header.n_sig:
        raise RecordError(f"{record}: the header declares no signals")
    if not isinstance(header, wfdb.MultiRecord):  # each segment of a multi-segment record is its own record
        _check_signal_files(header, path)
    return header, challenge_form


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
        if file.suffix == ".mat" and fmt in _MAT_V4_TYPES:
            _check_mat_file(file, fmt, offset, len(channels), length, path)
        skew = max(header.skew[i] or 0 for i in channels)  # wfdb allocates the skew on top of the length
        if skew > length:
            raise RecordError(f"{path}: skew of {skew} samples in the header is longer than the record ({length} samples)")


def _check_mat_file(file: Path, fmt: str, offset: int, channels: int, length: int, path: Path) -> None:
    """A .mat signal file is the MATLAB v4 matrix [channels, >= length] of the format's integers that the
    header's byte offset skips the MATLAB header of (the challenge's `16+24`: int16 `val`, 20 + 4 bytes)."""
    with open(file, "rb") as handle:
        head = handle.read(20)
    if len(head) < 20:
        raise RecordError(f"{path}: signal file {file.name} is too short ({len(head)} bytes) for a MATLAB v4 header")
    kind, rows, columns, imaginary, name_length = struct.unpack("<5i", head)
    expected, dtype = _MAT_V4_TYPES[fmt]
    if kind != expected or imaginary:
        raise RecordError(
            f"{path}: signal file {file.name} is not a MATLAB v4 little-endian real {dtype} matrix (type {kind}, "
            f"imaginary flag {imaginary}), which WFDB format {fmt} reads"
        )
    if offset != 20 + name_length:
        raise RecordError(
            f"{path}: the samples of {file.name} start at byte {20 + name_length} (after its MATLAB v4 header), "
            f"the header's byte offset is {offset}"
        )
    if rows != channels or columns < length:
        raise RecordError(
            f"{path}: signal file {file.name} holds a {rows} x {columns} matrix; the header needs {channels} signals "
            f"(rows) of {length} samples (columns)"
        )


def _read_challenge_samples(header: wfdb.Record, path: Path, sampto: int | None) -> wfdb.Record:
    """What wfdb.rdrecord(physical=True, return_res=32) does for a single-segment record, on a header parsed
    in memory (`_parse_challenge_header`): wfdb's own sample reader and digital-to-physical conversion."""
    channels = list(range(header.n_sig))
    if header.sig_len is None:  # as rdrecord infers it: from the size of the first signal file
        header.sig_len = wfdb_signal._infer_sig_len(
            file_name=header.file_name[0],
            fmt=header.fmt[0],
            tsamps_per_frame=sum(spf for name, spf in zip(header.file_name, header.samps_per_frame) if name == header.file_name[0]),
            byte_offset=header.byte_offset[0],
            dir_name=str(path.parent.absolute()),
            pn_dir=None,
        )
    sampto = header.sig_len if sampto is None else sampto
    header.check_read_inputs(0, sampto, channels, True, True, 32)
    header.e_d_signal = wfdb_signal._rd_segment(
        file_name=header.file_name,
        dir_name=str(path.parent.absolute()),
        pn_dir=None,
        fmt=header.fmt,
        n_sig=header.n_sig,
        sig_len=header.sig_len,
        byte_offset=header.byte_offset,
        samps_per_frame=header.samps_per_frame,
        skew=header.skew,
        init_value=header.init_value,
        sampfrom=0,
        sampto=sampto,
        channels=channels,
        ignore_skew=False,
        no_file=False,
        sig_data=None,
        return_res=32,
    )
    header._arrange_fields(channels=channels, sampfrom=0, smooth_frames=True)
    header.dac(expanded=False, return_res=32, inplace=True)
    return header


def _read_samples(header: wfdb.Record | wfdb.MultiRecord, path: Path, challenge_form: bool, sampto: int | None) -> wfdb.Record:
    """The record with its physical samples (p_signal, float32): read with numpy where fast_wfdb can,
    else by wfdb (its own reader for the challenge's .mat form)."""
    if challenge_form:
        return _read_challenge_samples(header, path, sampto)
    if isinstance(header, wfdb.Record) and header.sig_len:
        physical = fast_wfdb.read_physical(header, path.parent, sampto or header.sig_len)
        if physical is not None:
            header.p_signal = physical
            return header
    return wfdb.rdrecord(str(path), sampto=sampto, physical=True, return_res=32)


def read_record(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, float]:
    """Read a WFDB record as [12, T] float32 millivolts in LEADS_12 order, with its sampling rate.

    With `max_seconds`, only that many seconds from the start are read (a long record is cut anyway).
    """
    path = Path(path)
    record = str(path)
    header, challenge_form = _read_header(path)
    sampto = None
    if max_seconds is not None and header.sig_len:
        sampto = min(header.sig_len, int(np.ceil(header.fs * max_seconds)))
    try:  # an absurd gain in the header gives inf samples, which QC then excludes
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            data = _read_samples(header, path, challenge_form, sampto)
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
    signal = np.ascontiguousarray(data.p_signal.T[order], dtype=np.float32)
    if any(factor != 1.0 for factor in scale):  # x * 1.0 is x: millivolts are kept as read
        with np.errstate(over="ignore", invalid="ignore"):
            signal = (signal.astype(np.float64) * np.asarray(scale)[:, None]).astype(np.float32)
    return signal, float(data.fs)


def check_quality(signal: np.ndarray, settings: QCSettings) -> str | None:
    """The reason to exclude a canonical [12, T] signal, or None when it is usable."""
    if not np.isfinite(signal).all():  # one pass over the signal before any per-lead one
        nan_leads = [lead for lead, row in zip(LEADS_12, signal) if np.isnan(row).any()]
        if nan_leads:
            return f"NaN samples in leads {','.join(nan_leads)}"
        infinite = [lead for lead, row in zip(LEADS_12, signal) if np.isinf(row).any()]
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
