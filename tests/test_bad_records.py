"""Bad input, record by record and through `prepare`: each case is handled (resampled, reordered, converted,
padded, cut) or excluded with its reason in the QC table and counted in the summary; --strict fails.

`CASES` is the catalogue of bad records; benchmarks/reliability.py prints it as the bad-input table. Records
are written here with wfdb.wrsamp (and then corrupted), plus the real malformed and 400 Hz records of
../shared/data/challenge-samples, some of them corrupted in copies.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import wfdb
import yaml

from pipeline.errors import ManifestError, RecordError
from pipeline.manifests import read_manifest, write_tasks
from pipeline.params import load_params
from pipeline.stage_one.backbones import LEADS_12
from pipeline.stage_one.corpus import prepare_corpus
from pipeline.stage_one.demo import TASKS as DEMO_TASKS
from pipeline.stage_one.signals import (
    QCSettings,
    load_canonical,
    read_record,
    to_canonical,
)
from pipeline.stores import open_complete, strings
from pipeline.tasks import Task, task_from_params
from tests.conftest import DATA, need_shared
from tests.test_signals import sines

REAL = DATA / "challenge-samples" / "holdout_data"
SETTINGS = QCSettings(min_seconds=7.0)  # 7-10 s records are zero-padded, shorter ones excluded
TO_UNIT = {"mV": 1.0, "uV": 1e3, "V": 1e-3, "mmHg": 1.0}


def write(directory: Path, name: str, fs: float = 500, seconds: float = 10.0, leads=LEADS_12, units: str = "mV", signal=None) -> Path:
    """A format-16 record of `sines` (in mV, stored in `units`) with the given lead names."""
    signal = sines(fs, seconds, len(leads)) if signal is None else signal
    scale = TO_UNIT[units]
    wfdb.wrsamp(name, fs=fs, units=[units] * len(leads), sig_name=list(leads), p_signal=signal * scale, fmt=["16"] * len(leads),
                adc_gain=[1000.0 / scale] * len(leads), baseline=[0] * len(leads), write_dir=str(directory))
    return directory / name


def with_lead(fs: float, lead: str, change: Callable[[np.ndarray], None]) -> np.ndarray:
    signal = sines(fs)
    change(signal[:, LEADS_12.index(lead)])
    return signal


def corrupt(directory: Path, name: str, source: Path, edit: Callable[[Path], None]) -> None:
    """Copy a record under a new name (header's record line and file names renamed), then damage it."""
    header = (source.parent / f"{source.name}.hea").read_text().replace(source.name, name)
    (directory / f"{name}.hea").write_text(header)
    shutil.copy(source.parent / f"{source.name}.dat", directory / f"{name}.dat")
    edit(directory / name)


def truncate(path: Path) -> None:
    data = path.with_name(path.name + ".dat")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def set_header(path: Path, old: str, new: str) -> None:
    header = path.with_name(path.name + ".hea")
    header.write_text(header.read_text().replace(old, new))


@dataclass(frozen=True)
class Case:
    name: str
    problem: str
    expect: str | None  # a regex of the exclusion reason; None: the record is kept (and checked against sines)
    make: Callable[[Path, str], object]
    real: bool = False  # made from ../shared's challenge records


CASES = [
    Case("good", "12 leads, 500 Hz, 10 s, mV", None, lambda d, n: write(d, n)),
    *[Case(f"rate_{rate}", f"{rate} Hz", None, lambda d, n, rate=rate: write(d, n, fs=rate)) for rate in (100, 250, 257, 400, 1000)],
    Case("units_uV", "amplitudes in uV", None, lambda d, n: write(d, n, units="uV")),
    Case("units_V", "amplitudes in V", None, lambda d, n: write(d, n, units="V")),
    Case("lead_order", "leads in reverse order, upper-case names", None,
         lambda d, n: write(d, n, leads=[lead.upper() for lead in reversed(LEADS_12)], signal=sines(500)[:, ::-1])),
    Case("frank_leads", "15 leads: the 12 plus Frank vx, vy, vz", None, lambda d, n: write(d, n, leads=[*LEADS_12, "vx", "vy", "vz"])),
    Case("short_8s", "8 s long (>= min_seconds 7)", None, lambda d, n: write(d, n, seconds=8.0)),
    Case("long_30s", "30 s long", None, lambda d, n: write(d, n, seconds=30.0)),
    Case("short_4s", "4 s long", r"^4\.00 s long, shorter than the 7 s minimum$", lambda d, n: write(d, n, seconds=4.0)),
    Case("eight_leads", "8 leads", r"8 leads in the header, missing \['V3', 'V4', 'V5', 'V6'\]", lambda d, n: write(d, n, leads=LEADS_12[:8])),
    Case("unknown_names", "leads named ch1..ch12", r"missing \['I', .*\] and unknown leads \['ch1'",
         lambda d, n: write(d, n, leads=[f"ch{i + 1}" for i in range(12)])),
    Case("lead_twice", "lead II twice, no III", r"lead II appears twice", lambda d, n: set_header(write(d, n), " III\n", " II\n")),
    Case("units_mmHg", "unit mmHg", r"lead I has unit 'mmHg'; expected mV, uV, V or nV", lambda d, n: write(d, n, units="mmHg")),
    Case("rate_20", "20 Hz", r"sampling rate 20 Hz .* outside the supported 50-20000 Hz", lambda d, n: write(d, n, fs=20)),
    Case("nan", "NaN samples (WFDB's invalid value) in V2", r"^NaN samples in leads V2$",
         lambda d, n: write(d, n, signal=with_lead(500, "V2", lambda x: x.__setitem__(slice(100, 200), np.nan)))),
    Case("infinite", "gain 1e-40 in lead III's header line: inf mV", r"^infinite samples in leads III$",
         lambda d, n: set_header(write(d, n), "16 1000.0(0)/mV 16 0 0 0 0 III", "16 1e-40(0)/mV 16 0 0 0 0 III")),
    Case("flat_lead", "aVL all zero", r"^flat leads aVL$", lambda d, n: write(d, n, signal=with_lead(500, "aVL", lambda x: x.__setitem__(slice(None), 0.0)))),
    Case("all_zero", "every lead zero", r"^all leads flat", lambda d, n: write(d, n, signal=np.zeros((5000, 12)))),
    Case("no_dat", "signal file missing", r"signal file .*no_dat\.dat does not exist", lambda d, n: write(d, n).with_name(f"{n}.dat").unlink()),
    Case("truncated", "signal file cut in half", r"signal file truncated\.dat is truncated: 60000 bytes, the header needs 120000",
         lambda d, n: truncate(write(d, n))),
    Case("garbage_header", "header is binary garbage", r"unreadable header", lambda d, n: (d / f"{n}.hea").write_bytes(b"\x00\xff\x13garbage\n")),
    Case("no_header", "no files at all", r"header .*no_header\.hea does not exist", lambda d, n: None),
    Case("other_name", "header names another record", r"the header names record 'good', not 'other_name'",
         lambda d, n: (d / f"{n}.hea").write_text((d / "good.hea").read_text())),
    Case("gain_garbage", "gain 'abc' in lead I's line (wfdb alone uses 200)", r"the gain field 'abc' of signal 'I' is not a number",
         lambda d, n: set_header(write(d, n), "16 1000.0(0)/mV 16 0 0 0 0 I\n", "16 abc 16 0 0 0 0 I\n")),
    Case("bad_format", "signal format 999", r"unsupported WFDB signal format '999'",
         lambda d, n: set_header(write(d, n), f"{n}.dat 16 ", f"{n}.dat 999 ")),
    Case("real/919050", "real: 400 Hz, 10.24 s", None, lambda d, n: None, real=True),
    Case("real/919003", "real: 400 Hz, 7.3 s (padded)", None, lambda d, n: None, real=True),
    Case("real/9190_all_data_is_zero", "real malformed: all samples at baseline, 800 Hz", r"^all leads flat", lambda d, n: None, real=True),
    Case("real/9190_low_sample_rate", "real malformed: header of record 9190, 300 Hz", r"the header names record '9190'", lambda d, n: None, real=True),
    Case("real_truncated", "real 919050, signal file cut in half", r"is truncated: 49152 bytes, the header needs 98304",
         lambda d, n: corrupt(d, n, REAL / "919050", truncate), real=True),
    Case("real_no_dat", "real 919058, signal file missing", r"signal file .*real_no_dat\.dat does not exist",
         lambda d, n: corrupt(d, n, REAL / "919058", lambda p: p.with_name(f"{n}.dat").unlink()), real=True),
    Case("real_fs_nan", "real 919061, sampling rate 'nan' (wfdb alone reads 250 Hz)", r"sampling rate field in the header is 'nan', not a number",
         lambda d, n: corrupt(d, n, REAL / "919061", lambda p: set_header(p, f"{n} 12 400 ", f"{n} 12 nan ")), real=True),
]


def make_records(root: Path, real: bool = True) -> list[Case]:
    """Write every case under `root` (real ones only where ../shared exists); returns the cases written."""
    root.mkdir(parents=True, exist_ok=True)
    cases = [case for case in CASES if real or not case.real]
    if real:
        (root / "real").symlink_to(REAL, target_is_directory=True)  # a data root may link to another disk
    for case in sorted(cases, key=lambda case: case.name != "good"):  # `other_name` copies good's header
        case.make(root, case.name)
    return cases


def check_kept(case: Case, canonical: np.ndarray) -> float:
    """A kept record is the same 12 sines on the canonical grid: resampled, reordered, converted, padded, cut.

    Returns the largest error (mV) found where it was compared."""
    assert canonical.shape == (12, 5000) and canonical.dtype == np.float32 and np.isfinite(canonical).all()
    if case.real:
        original, fs = read_record(REAL / case.name.removeprefix("real/"))
        assert fs == 400
        # Samples 10 ms apart exist on both grids (every 4th at 400 Hz, every 5th at 500 Hz); a band-limited
        # resampling gives the same values there, away from the edges.
        shared = min(original.shape[1] // 4, 1000)
        got, expected = canonical[:, ::5][:, 20 : shared - 20], original[:, ::4][:, 20 : shared - 20]
        if original.shape[1] < 4000:
            assert (canonical[:, int(original.shape[1] * 1.25) + 1 :] == 0).all()
    else:
        valid = 4000 if case.name == "short_8s" else 5000
        got, expected = canonical[:, 250 : valid - 250], sines(500).T[:, 250 : valid - 250]
        assert (canonical[:, valid:] == 0).all()
    np.testing.assert_allclose(got, expected, atol=0.01 if case.real else 0.005)
    return float(np.abs(got - expected).max())


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    return root, make_records(root, real=REAL.exists())


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_bad_record_is_handled_or_excluded_with_its_reason(records, case):
    root, written = records
    if case not in written:
        need_shared(REAL)
    if case.expect is None:
        check_kept(case, load_canonical(root / case.name, SETTINGS))
    else:
        with pytest.raises(RecordError) as error:
            load_canonical(root / case.name, SETTINGS)
        assert str(error.value).startswith(f"{root / case.name}: ")
        assert re.search(case.expect, str(error.value).removeprefix(f"{root / case.name}: ")), str(error.value)


def test_a_long_record_is_read_only_as_far_as_needed_with_the_same_result(tmp_path):
    noisy = sines(257, seconds=40) + np.random.default_rng(0).normal(0, 0.05, (257 * 40, 12))
    path = write(tmp_path, "long", fs=257, signal=noisy)
    partial, _ = read_record(path, max_seconds=11.0)
    assert partial.shape == (12, int(np.ceil(257 * 11.0)))
    full, fs = read_record(path)
    assert np.array_equal(load_canonical(path, SETTINGS), to_canonical(full, fs, SETTINGS, "long"))


def write_manifest(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def manifest_rows(cases: list[Case]) -> list[dict]:
    """Two subjects' worth of labelled rows; every third record is its own subject."""
    return [{"record_id": case.name, "subject_id": f"p{i // 3}", "path": case.name, "rr_interval": 800.0 + i} for i, case in enumerate(cases)]


def test_prepare_quarantines_bad_records_counts_them_and_strict_fails(tmp_path, records):
    root, cases = records
    manifest = write_manifest(tmp_path / "manifest.jsonl", manifest_rows(cases))
    out = tmp_path / "corpus.zarr"
    with pytest.raises(RecordError, match=r"--strict: \d+ record\(s\) excluded .*short_4s: 4\.00 s long"):
        prepare_corpus(manifest, root, out, SETTINGS, chunk_records=8, workers=2, strict=True)
    assert not out.exists() and (tmp_path / "corpus.zarr.partial").exists()

    summary = prepare_corpus(manifest, root, out, SETTINGS, chunk_records=8, workers=2)
    assert summary["resumed_chunks"] >= 1  # the strict run's chunks are not read again
    corpus = open_complete(out, "prepare")
    reasons, ok = strings(corpus["qc_reason"]), corpus["qc_ok"][:]
    assert list(strings(corpus["record_id"])) == [case.name for case in cases]
    for row, case in enumerate(cases):
        if case.expect is None:
            assert ok[row] and reasons[row] == "", (case.name, reasons[row])
            check_kept(case, corpus["signals"][row])
        else:
            assert not ok[row] and re.search(case.expect, reasons[row]), (case.name, reasons[row])
            assert not corpus["signals"][row].any()
    bad = sum(case.expect is not None for case in cases)
    assert summary["records"] == len(cases) and summary["kept"] == len(cases) - bad
    assert sum(summary["excluded"].values()) == bad and corpus.attrs["summary"]["excluded"] == summary["excluded"]
    assert summary["excluded"]["# s long, shorter than the # s minimum"] == 1
    assert summary["excluded"]["signal file FILE is truncated: # bytes, the header needs #"] == 1 + REAL.exists()
    assert summary["excluded"]["NaN samples in leads V2"] == 1
    assert "resumed_chunks" not in corpus.attrs["summary"]  # the store depends on its inputs only


# (line 3 of a manifest whose line 1 is good and line 2 blank, the error it must raise)
BAD_LINES = [
    ('{"record_id": "x", "subject_id": "p", "path": "x"', r"m\.jsonl:3: invalid JSON \(Expecting ',' delimiter at column 50\)"),
    ({"record_id": "x", "path": "x"}, r"m\.jsonl:3: missing required field 'subject_id'"),
    ({"record_id": "x", "subject_id": "p", "path": "../x"}, r"m\.jsonl:3: path '\.\./x' leaves the data root"),
    ({"record_id": "x", "subject_id": "p", "path": "/elsewhere/x"}, r"m\.jsonl:3: field 'path': record path /elsewhere/x lies outside the data root"),
    ({"record_id": "x", "subject_id": "p", "path": "x", "rr_interval": "slow"},
     r"m\.jsonl: manifest line 3 \(record x\): label 'rr_interval' = 'slow' is not a number"),
    ({"record_id": "x", "subject_id": "p", "path": "x", "rr_interval": [1, 2]}, r"m\.jsonl:3: label 'rr_interval' has unsupported value"),
    ('{"record_id": "x", "subject_id": "p", "path": "x", "rr_interval": 1' + "0" * 5000 + "}", r"m\.jsonl:3: invalid JSON \(Exceeds the limit"),
    ('{"record_id": "x", "subject_id": "p", "path": ' + "[" * 100000 + "]" * 100000 + "}", r"m\.jsonl:3: invalid JSON"),
    ('{"record_id": "\\ud800", "subject_id": "p", "path": "x"}', r"m\.jsonl:3: field 'record_id' is not valid Unicode"),
    ('{"record_id": "x", "subject_id": "p", "path": "a\\u0000b"}', r"m\.jsonl:3: field 'path' holds a control character"),
    ({"record_id": "x", "subject_id": "p", "path": "./"}, r"m\.jsonl:3: path './' names a folder, not a WFDB record"),
    ({"record_id": "good", "subject_id": "p", "path": "x"}, r"m\.jsonl:3: duplicate record_id 'good' \(first seen on line 1\)"),
]


@pytest.mark.parametrize("row, message", BAD_LINES)
def test_bad_manifest_lines_fail_before_any_record_is_read(tmp_path, row, message):
    rows = [{"record_id": "good", "subject_id": "p", "path": "good", "rr_interval": 800.0}, "", row]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    task = Task("rr_interval", "regression", "rr_interval")
    with pytest.raises(ManifestError, match=message):
        prepare_corpus(manifest, tmp_path / "no-records-here", tmp_path / "corpus.zarr", SETTINGS, tasks=[task])
    assert not (tmp_path / "corpus.zarr.partial").exists()


def test_manifest_encoding_problems_name_the_line(tmp_path):
    good = json.dumps({"record_id": "a", "subject_id": "p", "path": "a"}).encode()
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + good + b"\n")  # Excel's byte-order mark is fine
    assert read_manifest(tmp_path / "bom.jsonl")[0].record_id == "a"
    (tmp_path / "latin1.jsonl").write_bytes(good + b"\n" + good.replace(b'"a"', b'"caf\xe9"') + b"\n")
    with pytest.raises(ManifestError, match=r"latin1\.jsonl:2: not UTF-8 text"):
        read_manifest(tmp_path / "latin1.jsonl")


def test_bad_params_name_the_file_and_the_field(tmp_path, monkeypatch):
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    write_tasks(DEMO_TASKS, Path(params["data"]["manifest"]))
    path = tmp_path / "params.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ManifestError, match=r"(?s)params\.yaml: invalid YAML.*line 1, column 7"):
        load_params(path)
    path.write_text(yaml.safe_dump({k: v for k, v in params.items() if k != "prepare"}))
    with pytest.raises(ManifestError, match=r"params\.yaml: missing sections \['prepare'\]"):
        load_params(path)
    path.write_text(yaml.safe_dump({**params, "tasks": ["rr_interval", "qt_interval"]}))
    with pytest.raises(ManifestError, match=r"params\.yaml: tasks: expected names drawn from .*got \['qt_interval'\]"):
        load_params(path)
    with pytest.raises(ManifestError, match=r"unknown task 'qt'"):
        task_from_params("qt", DEMO_TASKS)
    with pytest.raises(ManifestError, match=r"task_definitions\.bad\.type is 'ordinal'"):
        task_from_params("bad", {"bad": {"type": "ordinal"}})
