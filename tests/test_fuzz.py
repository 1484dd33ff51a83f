"""Property-based fuzzing of the two readers of user files: manifest lines and WFDB headers.

Whatever the input, the reader either returns a usable result or raises the project's own error
(ManifestError, RecordError) with a message: never another exception, a hang or a huge allocation.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ManifestError, RecordError
from pipeline.manifests import ManifestRecord, parse_line, read_manifest, resolve_record
from pipeline.stage_one.signals import QCSettings, load_canonical
from tests.test_bad_records import write

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FIELDS = ["record_id", "subject_id", "path", "ecg_path", "fold", "age", "rr_interval", "labels", "report_label"]

any_text = st.text(st.characters(categories=["Cs"]) | st.characters(), max_size=20)  # lone surrogates included
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**18, max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True) | any_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
paths = st.sampled_from(["a/r1", "/abs/r1", "../r1", "a/../../r1", ".", "", " ", "r1.hea", "C:\\data\\r1", "a\x00b", "\ud800", "~/r1"]) | any_text
ids = st.integers() | st.floats() | any_text | json_values
entries = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), json_values | paths, max_size=6) | st.fixed_dictionaries(
    {"subject_id": ids, "path": paths}, optional={"record_id": ids, "fold": json_values, "age": json_values, "labels": json_values}
)


@st.composite
def mutated_lines(draw) -> str:
    """A valid line with a few characters deleted, inserted or replaced."""
    text = json.dumps({"record_id": "r1", "subject_id": 7, "path": "a/r1", "fold": 2, "age": 61.5, "labels": ["AF"]})
    for _ in range(draw(st.integers(1, 3))):
        at, cut = draw(st.integers(0, len(text))), draw(st.integers(0, 3))
        text = text[:at] + draw(st.text(alphabet=string.printable + "\x00\u2028{}[]\":,", max_size=3)) + text[at + cut :]
    return text


def check_record(record: ManifestRecord | None, root: Path) -> None:
    """A parsed record is usable: storable ids, a path that resolves inside the root or is refused."""
    if record is None:
        return
    for value in (record.record_id, record.subject_id, record.path):
        assert isinstance(value, str) and value and value.encode("utf-8")
    assert ".." not in Path(record.path).parts
    try:
        assert resolve_record(root, record.path).is_relative_to(root)
    except ManifestError:
        assert Path(record.path).is_absolute()


@FUZZ
@given(line=st.one_of(st.text(max_size=80), entries.map(json.dumps), mutated_lines()))
def test_any_manifest_line_parses_or_raises_manifest_error(line):
    try:
        record = parse_line(line, "m.jsonl", 3)
    except ManifestError as error:
        assert str(error).startswith("m.jsonl:3: ")
        return
    check_record(record, Path("/data/root"))


@FUZZ
@given(lines=st.lists(st.binary(max_size=40) | entries.map(lambda e: json.dumps(e).encode()), min_size=1, max_size=4))
def test_any_manifest_file_reads_or_raises_manifest_error(tmp_path, lines):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"\n".join(lines))
    try:
        records = read_manifest(manifest)
    except ManifestError as error:
        assert str(error).startswith(f"{manifest}:") or str(error).startswith(f"manifest {manifest}")
        return
    assert len({record.record_id for record in records}) == len(records)
    for record in records:
        check_record(record, Path("/data/root"))


# WFDB headers: random text, and a real 12-lead header with tokens replaced, lines dropped or repeated,
# and the signal file cut, the mutations a bad copy or a hand edit makes.
TOKENS = ["0", "-1", "1", "12", "13", "nan", "inf", "1e3", "500/0", "0.0001", "20000", "99999999999", "16", "212", "24",
          "8", "80", "310", "508", "16x1000000", "16:99999999", "16+99999999", "1e-40(0)/mV", "0(0)/mV", "200/uV",
          "1000.0(0)/mmHg", "abc", "", "I", "II", "V6", "vx", "-", "#", "r", "x.dat", "../x.dat", "é"]
SETTINGS = QCSettings(min_seconds=2.0)


@pytest.fixture(scope="module")
def good_record(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    path = write(folder, "r", fs=500, seconds=4.0)
    return path.with_name("r.hea").read_text(), path.with_name("r.dat").read_bytes()


def check_header(folder: Path, header: str, signal: bytes) -> None:
    (folder / "r.hea").write_text(header, encoding="utf-8", errors="surrogateescape")
    (folder / "r.dat").write_bytes(signal)
    try:
        canonical = load_canonical(folder / "r", SETTINGS)
    except RecordError as error:
        assert str(error).startswith(f"{folder / 'r'}: ") and len(str(error)) > len(str(folder)) + 10
        return
    assert canonical.shape == (12, 5000) and canonical.dtype == np.float32 and np.isfinite(canonical).all()


@FUZZ
@given(data=st.data())
def test_any_mutated_header_reads_or_raises_record_error(tmp_path, good_record, data):
    header, signal = good_record
    lines = [line.split(" ") for line in header.splitlines()]
    for _ in range(data.draw(st.integers(1, 4))):
        row = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["replace", "replace", "replace", "drop", "repeat"]))
        if action == "replace":
            column = data.draw(st.integers(0, len(lines[row]) - 1))
            lines[row][column] = data.draw(st.sampled_from(TOKENS) | st.text(alphabet=string.printable, max_size=6))
        elif action == "drop" and len(lines) > 1:
            lines.pop(row)
        else:
            lines.insert(row, list(lines[row]))
    cut = data.draw(st.sampled_from([len(signal), len(signal), len(signal) // 2, 1, 0]))
    check_header(tmp_path, "\n".join(" ".join(line) for line in lines) + "\n", signal[:cut])


@FUZZ
@given(text=st.text(max_size=200) | st.text(alphabet=string.digits + " \n./()+x:-emVIV", max_size=200))
def test_any_header_text_reads_or_raises_record_error(tmp_path, good_record, text):
    check_header(tmp_path, text, good_record[1])
