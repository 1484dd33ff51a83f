"""MIMIC-IV-ECG manifest builder on a small corpus written here in PhysioNet's exact layout and CSV columns.

Every task value is checked against a value worked out by hand from the tables below (the reasoning is in
the comments of EXPECTED). Malformed inputs must raise ManifestError naming file, row and column.
"""

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import wfdb
import yaml

from data_manifests.mimic_iv_ecg import RHYTHM_CLASSES, build_mimic_iv_ecg_manifest, rhythm_label
from data_manifests.ptbxl import tasks_path, write_manifest
from pipeline.errors import ManifestError
from tests.conftest import DATA, need_shared

# The real headers: MIMIC-IV-ECG v1.0 (checked against shared/data/mimic-iv-ecg-format below) and MIMIC-IV hosp.
RECORD_LIST_HEADER = "subject_id,study_id,file_name,ecg_time,path"
MACHINE_HEADER = ("subject_id,study_id,cart_id,ecg_time," + ",".join(f"report_{i}" for i in range(18)) +
                  ",bandwidth,filtering,rr_interval,p_onset,p_end,qrs_onset,qrs_end,t_end,p_axis,qrs_axis,t_axis")
PATIENTS_HEADER = "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod"
LABEVENTS_HEADER = ("labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,"
                    "value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments")

# (subject_id, study_id, ecg_time): record_list.csv order; 40000002 is listed before the earlier 40000003.
RECORDS = [
    (10000032, 40689238, "2180-07-23 08:44:00"),
    (10000032, 40000001, "2182-03-01 10:00:00"),
    (10000084, 40000002, "2161-12-31 23:30:00"),
    (10000084, 40000003, "2160-05-05 05:05:05"),
    (10000117, 40000004, "2170-01-01 00:00:00"),
    (10000117, 40000005, "2170-01-01 00:00:00"),
    (10000200, 40000006, "2155-01-01 12:00:00"),
    (10000200, 40000007, "2154-06-01 12:00:00"),
]
# study_id -> (rr_interval, report lines); 40000007 has no machine_measurements row.
MEASUREMENTS = {
    40689238: ("659", ["Sinus rhythm", "Possible right atrial abnormality", "", "Borderline ECG"]),
    40000001: ("29999", ["Atrial fibrillation with rapid ventricular response", "Abnormal ECG"]),
    40000002: ("1200", ["Marked sinus bradycardia", "Otherwise normal ECG"]),
    40000003: ("800", ["Sinus tachycardia", "Left axis deviation"]),
    40000004: ("1000", ["Atrial flutter with 2:1 A-V conduction"]),
    40000005: ("950", ["Ectopic atrial rhythm", "Sinus rhythm"]),
    40000006: ("", ["Borderline ECG"]),
}
# subject_id, gender, anchor_age, anchor_year; 10000117 is not in patients.
PATIENTS = [(10000032, "F", 52, 2180), (10000084, "M", 72, 2160), (10000200, "F", 30, 2150)]
# subject_id, itemid, charttime, valuenum, ref_range_lower, ref_range_upper, flag
LABS = [
    (10000032, 50971, "2180-07-23 06:00:00", "5.6", "3.3", "5.1", ""),          # 2h44 before 40689238: high
    (10000032, 50971, "2180-07-22 08:00:00", "4.0", "3.3", "5.1", ""),          # farther: ignored
    (10000032, 50971, "2182-03-02 12:00:00", "4.0", "3.3", "5.1", "abnormal"),  # 26 h after 40000001
    (10000084, 50971, "2161-12-31 22:30:00", "4.0", "3.5", "5.3", ""),          # 1 h before 40000002: normal
    (10000084, 50822, "2162-01-01 00:30:00", "2.9", "3.5", "5.3", ""),          # 1 h after: low -> tie gives 1
    (10000084, 50971, "2161-12-31 23:40:00", "", "3.5", "5.3", ""),             # no number: not a result
    (10000084, 50971, "2160-05-05 06:00:00", "4.2", "3.5", "5.3", ""),          # 55 min after 40000003: normal
    (10000084, 50912, "2160-05-05 05:05:05", "9.9", "0.5", "1.2", "abnormal"),  # creatinine: not potassium
    (19999999, 50971, "2170-01-01 00:00:00", "6.5", "3.3", "5.1", "abnormal"),  # subject without ECGs
]
EXPECTED = {  # study_id: (subject, rr_interval, age, gender, flag, report_label)
    40689238: ("10000032", 659.0, 52.0, 1, 1, "sinus_rhythm"),          # 52 + (2180 - 2180); 5.6 > 5.1
    40000001: ("10000032", None, 54.0, 1, None, "atrial_fibrillation"),  # rr 29999; nearest lab 26 h > 24 h
    40000002: ("10000084", 1200.0, 73.0, 0, 1, "sinus_bradycardia"),     # 72 + 1; equally near, one low
    40000003: ("10000084", 800.0, 72.0, 0, 0, "sinus_tachycardia"),      # 4.2 in range, no flag
    40000004: ("10000117", 1000.0, None, None, None, "atrial_flutter"),  # not in patients, no labs
    40000005: ("10000117", 950.0, None, None, None, "other"),            # first rhythm line: ectopic atrial
    40000006: ("10000200", None, 35.0, 1, None, None),                   # empty rr; no rhythm statement
    40000007: ("10000200", None, 34.0, 1, None, None),                   # no machine_measurements row
}


def record_path(subject: int, study: int) -> str:
    return f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"


def ecg_mv(i: int) -> tuple[np.ndarray, list[str]]:
    """A 10 s, 500 Hz, 12-lead ECG in mV, in MIMIC-IV-ECG's lead order: a real PTB-XL record where the
    shared data is present (leads mapped by name), a synthetic one otherwise."""
    leads = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
    ptbxl = DATA / "ptbxl-500" / "records500" / "00000" / f"{i + 1:05d}_hr"
    if ptbxl.with_suffix(".hea").exists():
        signal, fields = wfdb.rdsamp(str(ptbxl))
        names = [n.upper() for n in fields["sig_name"]]
        return signal[:, [names.index(lead.upper()) for lead in leads]], leads
    t = np.arange(5000) / 500
    return np.stack([np.sin(2 * np.pi * (1 + k / 12) * t) for k in range(12)], axis=1), leads


def write_csv(path: Path, header: str, rows: list[list]) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as f:
        f.write(header + "\n")
        csv.writer(f, lineterminator="\n").writerows(rows)


def write_corpus(root: Path, with_signals: bool = True) -> tuple[Path, Path, Path]:
    """MIMIC-IV-ECG at root (record_list, machine_measurements, files/...), and MIMIC-IV hosp tables beside
    it: patients.csv.gz (gzipped, as PhysioNet ships hosp) and labevents.csv."""
    ecg = root / "mimic-iv-ecg"
    ecg.mkdir(parents=True)
    write_csv(ecg / "record_list.csv", RECORD_LIST_HEADER,
              [[s, st, st, t, record_path(s, st)] for s, st, t in RECORDS])
    times = {st: t for _, st, t in RECORDS}
    subjects = {st: s for s, st, _ in RECORDS}
    write_csv(ecg / "machine_measurements.csv", MACHINE_HEADER, [
        [subjects[st], st, 6848296, times[st], *(lines + [""] * (18 - len(lines))),
         "0.005-150 Hz", "60 Hz notch Baseline filter", rr, 40, 128, 170, 258, 518, 81, 77, 79]
        for st, (rr, lines) in MEASUREMENTS.items()])
    if with_signals:
        for i, (subject, study, _) in enumerate(RECORDS):
            folder = ecg / record_path(subject, study).rsplit("/", 1)[0]
            folder.mkdir(parents=True)
            signal, leads = ecg_mv(i)
            wfdb.wrsamp(str(study), fs=500, units=["mV"] * 12, sig_name=leads, p_signal=signal, fmt=["16"] * 12,
                        adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    hosp = root / "mimic-iv" / "hosp"
    hosp.mkdir(parents=True)
    write_csv(hosp / "patients.csv.gz", PATIENTS_HEADER,
              [[s, g, a, y, "2014 - 2016", ""] for s, g, a, y in PATIENTS])
    write_csv(hosp / "labevents.csv", LABEVENTS_HEADER, [
        [n, s, "", 1000 + n, item, "P12345", t, t, v or "HEMOLYZED", v, "mEq/L", lo, hi, flag, "ROUTINE", ""]
        for n, (s, item, t, v, lo, hi, flag) in enumerate(LABS, 1)])
    return ecg, hosp / "patients.csv.gz", hosp / "labevents.csv"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("mimic"))


def test_fixture_headers_are_physionets():
    fmt = need_shared(DATA / "mimic-iv-ecg-format")
    assert (fmt / "record_list.csv").read_text().splitlines()[0] == RECORD_LIST_HEADER
    assert (fmt / "machine_measurements.csv").read_text().splitlines()[0] == MACHINE_HEADER


def test_every_task_value(corpus):
    ecg, patients, labevents = corpus
    rows, tasks = build_mimic_iv_ecg_manifest(ecg, patients_csv=patients, labevents_csv=labevents)
    assert list(tasks) == ["rr_interval", "age", "gender", "flag", "report_label"]
    assert tasks["report_label"] == {"type": "multiclass", "label": "report_label", "classes": list(RHYTHM_CLASSES)}
    assert [r["record_id"] for r in rows] == [str(st) for _, st, _ in RECORDS]  # record_list order
    for row in rows:
        subject, rr, age, gender, flag, report = EXPECTED[int(row["record_id"])]
        assert row == {"record_id": row["record_id"], "subject_id": subject,
                       "path": record_path(int(subject), int(row["record_id"])), "rr_interval": rr,
                       "age": age, "gender": gender, "flag": flag, "report_label": report}
        header = wfdb.rdheader(str(ecg / row["path"]))  # the path names a real record, by PhysioNet's layout
        assert (header.n_sig, header.fs, header.sig_len, header.adc_gain[0]) == (12, 500, 5000, 200.0)


def test_window_and_missing_sources(corpus):
    ecg, patients, labevents = corpus
    rows, _ = build_mimic_iv_ecg_manifest(ecg, labevents_csv=labevents, potassium_window_hours=48)
    flags = {r["record_id"]: r["flag"] for r in rows}
    assert flags["40000001"] == 1  # the 26 h result is in a 48 h window, and the lab flagged it
    rows, tasks = build_mimic_iv_ecg_manifest(ecg)
    assert list(tasks) == ["rr_interval", "report_label"]
    assert set(rows[0]) == {"record_id", "subject_id", "path", "rr_interval", "report_label"}


def test_one_per_subject_and_max_subjects(corpus):
    ecg, patients, labevents = corpus
    rows, _ = build_mimic_iv_ecg_manifest(ecg, one_per_subject=True)
    # earliest ECG per subject; 40000004/40000005 are simultaneous, so the lower study_id
    assert [r["record_id"] for r in rows] == ["40689238", "40000003", "40000004", "40000007"]
    rows, _ = build_mimic_iv_ecg_manifest(ecg, one_per_subject=True, max_subjects=2)
    assert [r["subject_id"] for r in rows] == ["10000032", "10000084"]


@pytest.mark.parametrize("lines, expected", [
    (["Sinus rhythm", "Atrial fibrillation"], "sinus_rhythm"),                     # first rhythm line wins
    (["Borderline ECG", "SINUS TACHYCARDIA"], "sinus_tachycardia"),                # case-insensitive
    (["Atrial fibrillation has replaced Sinus rhythm"], "atrial_fibrillation"),    # leftmost phrase
    (["Sinus rhythm has replaced atrial flutter"], "sinus_rhythm"),
    (["Sinus bradycardia with sinus arrhythmia"], "sinus_bradycardia"),
    (["Junctional rhythm", "Sinus rhythm"], "other"),
    (["Ventricular paced"], "other"),
    (["Left ventricular hypertrophy", "Abnormal ECG"], None),
    ([], None),
])
def test_rhythm_label(lines, expected):
    assert rhythm_label(lines) == expected


def test_written_manifest_round_trips(corpus, tmp_path):
    ecg, patients, labevents = corpus
    rows, tasks = build_mimic_iv_ecg_manifest(ecg, patients_csv=patients, labevents_csv=labevents)
    out = write_manifest(rows, tasks, tmp_path / "mimic.jsonl")
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert yaml.safe_load(tasks_path(out).read_text()) == tasks
    assert tasks_path(out).name == "mimic.tasks.yaml"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mimic.jsonl", "mimic.tasks.yaml"]  # no temp files left


def rewrite_cell(path: Path, row: int, column: str, value: str | None) -> None:
    """Set one cell of data row `row` (1 = first after the header); value None drops the row's last field."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        table = list(csv.reader(f))
    if value is None:
        table[row].pop()
    else:
        table[row][table[0].index(column)] = value
    with opener(path, "wt", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(table)


@pytest.mark.parametrize("file, row, column, value, message", [
    ("machine_measurements.csv", 3, "rr_interval", "12OO",
     "row 3 (line 4), column 'rr_interval': '12OO' is not a number"),
    ("machine_measurements.csv", 2, "t_axis", None, "row 2 (line 3) has 32 fields, the header has 33"),
    ("record_list.csv", 4, "ecg_time", "2160-13-05 05:05:05", "row 4 (line 5), column 'ecg_time'"),
    ("record_list.csv", 2, "study_id", "40689238", "row 2 (line 3), column 'study_id': '40689238' appears twice"),
    ("record_list.csv", 5, "path", "files/p1000/p10000117/s40000004/40000004.hea", "row 5 (line 6), column 'path'"),
    ("patients.csv.gz", 2, "gender", "X", "row 2 (line 3), column 'gender': 'X' is neither 'F' nor 'M'"),
    ("labevents.csv", 7, "charttime", "yesterday", "row 7 (line 8), column 'charttime'"),
    ("labevents.csv", 5, "valuenum", "low", "row 5 (line 6), column 'valuenum': 'low' is not a number"),
])
def test_malformed_input_names_file_row_and_column(tmp_path, file, row, column, value, message):
    ecg, patients, labevents = write_corpus(tmp_path, with_signals=False)
    path = {"patients.csv.gz": patients, "labevents.csv": labevents}.get(file, ecg / file)
    rewrite_cell(path, row, column, value)
    with pytest.raises(ManifestError) as error:
        # chunks of 2 rows: a labevents row number must count the rows of earlier chunks
        build_mimic_iv_ecg_manifest(ecg, patients_csv=patients, labevents_csv=labevents, labevents_chunk_rows=2)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_missing_column_and_file(tmp_path):
    ecg, patients, labevents = write_corpus(tmp_path, with_signals=False)
    write_csv(patients, "subject_id,gender,anchor_age", [[10000032, "F", 52]])
    with pytest.raises(ManifestError, match=r"patients.csv.gz: missing column\(s\) \['anchor_year'\]"):
        build_mimic_iv_ecg_manifest(ecg, patients_csv=patients)
    with pytest.raises(ManifestError, match="record_list.csv: file not found"):
        build_mimic_iv_ecg_manifest(tmp_path / "nowhere")
