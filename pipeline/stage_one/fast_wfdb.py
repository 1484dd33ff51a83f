"""The common form of a WFDB record read without wfdb's per-record overhead; wfdb stays the reference.

wfdb.rdheader costs ~10-30 ms a header (a pandas lookup per field) and rdrecord parses the header again,
while reading a 12-lead 10 s record's samples takes ~50 us: at MIMIC-IV-ECG's 800,000 records the header
parsing alone is hours. This module parses the form that ECG corpora are written in (PTB-XL, MIMIC-IV-ECG,
the CODE-15 challenge sets) and reads the samples of uncompressed formats with numpy:

    NAME N_SIG FS SIG_LEN [HH:MM:SS [DD/MM/YYYY]]                          (record line)
    FILE FMT[+BYTE_OFFSET] GAIN[(BASELINE)]/UNITS ADC_RES ADC_ZERO INIT_VALUE CHECKSUM BLOCK_SIZE DESCRIPTION

(fields separated by spaces or tabs, comment lines starting with `#` anywhere). It gives exactly what wfdb
gives, field for field (`parse_header` -> rdheader's Record) and sample for sample (`read_physical` ->
rdrecord(physical=True, return_res=32).p_signal); tests/test_fast_reader.py checks both on every record in
../shared and against wfdb on fuzzed headers. Anything else (multi-segment records, counter frequencies, a
fractional or missing field, a gain of 0 or with an exponent, samples per frame, skew, other formats, a
description with a tab...) returns None, and the caller asks wfdb: nothing is guessed.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import numpy as np
import wfdb

_RECORD_LINE = re.compile(
    r"(?P<name>[-\w]+)[ \t]+(?P<n_sig>\d+)[ \t]+(?P<fs>\d{1,9})[ \t]+(?P<sig_len>\d+)"
    r"(?:[ \t]+(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)(?:[ \t]+(?P<day>\d\d)/(?P<month>\d\d)/(?P<year>\d{4}))?)?"
)
_SIGNAL_LINE = re.compile(
    r"(?P<file>[-\w]+(?:\.\w+)?)[ \t]+(?P<fmt>\d+)(?:\+(?P<offset>\d+))?"
    r"[ \t]+(?P<gain>-?\d+(?:\.\d*)?)(?:\((?P<baseline>-?\d+)\))?/(?P<units>\w+)"
    r"[ \t]+(?P<adc_res>\d+)[ \t]+(?P<adc_zero>-?\d+)[ \t]+(?P<init>-?\d+)[ \t]+(?P<checksum>-?\d+)[ \t]+(?P<block>\d+)"
    r"[ \t]+(?P<description>[^\t]+)"
)
# Signal formats whose samples are plain integers, one per sample: numpy dtype and the offset that WFDB
# subtracts (formats 80 and 160 store offset binary). WFDB marks a missing sample with the most negative
# value of the format, which wfdb reads as NaN.
_NUMPY_FORMATS = {"16": ("<i2", 0), "61": (">i2", 0), "32": ("<i4", 0), "80": ("u1", 128), "160": ("<u2", 32768)}
_INVALID_SAMPLE = {"16": -(2**15), "61": -(2**15), "32": -(2**31), "80": -(2**7), "160": -(2**15)}


def parse_header(text: str) -> wfdb.Record | None:
    """The header text (decoded as wfdb decodes it: ASCII, other bytes dropped) as wfdb.rdheader's Record,
    or None when it is not in the form described above."""
    lines, comments = [], []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            comments.append(line.strip(" \t#"))
        elif line:
            lines.append(line)
    if not lines:
        return None
    record_line = _RECORD_LINE.fullmatch(lines[0])
    if record_line is None or len(lines) == 1 or int(record_line["n_sig"]) != len(lines) - 1:
        return None
    signal_lines = [_SIGNAL_LINE.fullmatch(line) for line in lines[1:]]
    if any(line is None or float(line["gain"]) == 0 for line in signal_lines):  # wfdb reads a gain of 0 as 200
        return None
    try:
        fields = _record_fields(record_line)
    except ValueError:  # not a real time or date (25:00:00, 31/02/2020): wfdb says what is wrong
        return None
    header = wfdb.Record(**fields)
    if fields.get("base_date") and fields.get("base_time"):  # rdheader sets this one too
        header.base_datetime = datetime.datetime.combine(fields["base_date"], fields["base_time"])
    for field, values in _signal_fields(signal_lines).items():
        setattr(header, field, values)
    header.comments = comments
    return header


def _record_fields(line: re.Match) -> dict:
    time = date = None
    if line["hour"] is not None:
        time = datetime.time(int(line["hour"]), int(line["minute"]), int(line["second"]))
    if line["year"] is not None:
        date = datetime.date(int(line["year"]), int(line["month"]), int(line["day"]))
    return {"record_name": line["name"], "n_sig": int(line["n_sig"]), "fs": int(line["fs"]), "counter_freq": None,
            "base_counter": None, "sig_len": int(line["sig_len"]), "base_time": time, "base_date": date}


def _signal_fields(lines: list[re.Match]) -> dict[str, list]:
    """Per-signal fields as rdheader gives them; a baseline left out is the ADC zero (WFDB's rule)."""
    file, fmt, offset, gain, baseline, units, adc_res, adc_zero, init, checksum, block, description = zip(*(line.groups() for line in lines))
    return {
        "file_name": list(file), "fmt": list(fmt), "samps_per_frame": [1] * len(lines), "skew": [None] * len(lines),
        "byte_offset": [None if value is None else int(value) for value in offset], "adc_gain": list(map(float, gain)),
        "baseline": [int(zero if value is None else value) for value, zero in zip(baseline, adc_zero)], "units": list(units),
        "adc_res": list(map(int, adc_res)), "adc_zero": list(map(int, adc_zero)), "init_value": list(map(int, init)),
        "checksum": list(map(int, checksum)), "block_size": list(map(int, block)), "sig_name": list(description),
    }


def read_physical(header: wfdb.Record, directory: Path, sampto: int) -> np.ndarray | None:
    """The first `sampto` samples of every signal in physical units: [sampto, n_sig] float32, exactly
    wfdb.rdrecord(physical=True, return_res=32).p_signal, or None when the signal files are not all in one
    of the plain integer formats with one sample per frame and no skew (wfdb reads those).

    The caller has checked that the signal files exist and hold `sig_len` frames; a file that turns out
    shorter returns None too, so that wfdb reports it. The array is the transpose of a [n_sig, sampto] one:
    each signal's samples are contiguous, as the caller takes them apart by lead.
    """
    if not sampto or any(fmt not in _NUMPY_FORMATS for fmt in header.fmt) or any(spf != 1 for spf in header.samps_per_frame):
        return None
    if any(skew for skew in header.skew):
        return None
    physical = np.empty((header.n_sig, sampto), dtype=np.float32)
    missing = np.zeros(physical.shape, dtype=bool) if len(set(header.file_name)) > 1 else None
    for name in dict.fromkeys(header.file_name):
        channels = [index for index, other in enumerate(header.file_name) if other == name]
        layouts = {(header.fmt[index], header.byte_offset[index] or 0) for index in channels}
        if len(layouts) != 1 or channels[-1] - channels[0] != len(channels) - 1:  # a file's signals are on consecutive
            return None  # lines, in one format from one byte offset (WFDB's rule): anything else is wfdb's to judge
        fmt, start = layouts.pop()
        dtype, offset = _NUMPY_FORMATS[fmt]
        count = sampto * len(channels)
        samples = np.fromfile(directory / name, dtype=dtype, count=count, offset=start)
        if samples.size != count:
            return None
        samples = samples.reshape(sampto, len(channels)).T  # a frame holds one sample of each of the file's signals
        invalid = samples == _INVALID_SAMPLE[fmt] + offset
        if missing is None:  # the usual case, one file: no copies by signal
            physical[:] = samples  # exact up to 24 bits; format 32 is rounded to float32 as wfdb rounds it
            missing = invalid
        else:
            physical[channels] = samples
            missing[channels] = invalid
        if offset:
            physical[channels] -= offset
    baseline = np.asarray(header.baseline, dtype=np.int64)[:, None]
    if baseline.any():
        physical -= _operand(baseline)
    physical /= _operand(np.asarray(header.adc_gain, dtype=np.float64)[:, None])
    if missing.any():
        physical[missing] = np.nan
    return physical.T


def _operand(values: np.ndarray) -> np.ndarray | np.generic:
    """Per-signal baselines or gains [n_sig, 1] as the operand that computes wfdb's numbers fastest: one scalar where
    all signals share the value (numpy's contiguous loop), float32 where that holds the values exactly.

    wfdb subtracts the baselines and divides by the gains in float64 and rounds each result to float32.
    With float32 operands that hold the same values, float32 arithmetic gives the same numbers: the
    difference of two integers is exact in float64, and a quotient of float32 numbers rounded to float64
    and then to float32 is the quotient rounded to float32 (53 >= 2 * 24 + 2 bits: that double rounding
    is innocuous), at a third of the cost of mixing float32 and float64.
    """
    single = values.astype(np.float32)
    if np.array_equal(single, values):
        values = single
    return values[0, 0] if (values == values[0, 0]).all() else values
