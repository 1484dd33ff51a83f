"""MIMIC-IV-ECG manifest with EnECG's five tasks, from the files as PhysioNet distributes them.

Inputs (column names exactly as in MIMIC-IV-ECG v1.0 and MIMIC-IV hosp; .csv or .csv.gz):
- `<ecg_root>/record_list.csv`: subject_id, study_id, file_name, ecg_time, path (records are
  `<ecg_root>/<path>.hea/.dat`, path like files/p1000/p10000032/s40689238/40689238).
- `<ecg_root>/machine_measurements.csv`: subject_id, study_id, cart_id, ecg_time, report_0..report_17,
  bandwidth, filtering, rr_interval, p_onset, ...
- optional MIMIC-IV `patients.csv(.gz)`: subject_id, gender, anchor_age, anchor_year, ...
- optional MIMIC-IV `labevents.csv(.gz)`: subject_id, itemid, charttime, valuenum, ref_range_lower,
  ref_range_upper, flag, ... (streamed in chunks: the real file has ~150 million rows; itemid is matched
  as the plain integer text MIMIC writes, and only the potassium rows' cells are parsed and checked).

Tasks (record_id = study_id; subject_id = MIMIC subject_id; no fold: EnECG splits subject-wise k-fold later):
- rr_interval (regression, ms) from machine_measurements; 29999 is the machine's "not measured" value,
  written as null (EnECG's own loader drops it too).
- age (regression, years) = anchor_age + (year of ecg_time - anchor_year). MIMIC-IV shifts each patient's
  dates by one offset, so this is the age at the ECG to within a year. anchor_age is 91 for every patient
  older than 89; that is kept as given. Needs patients.csv.
- gender (binary): F = 1, M = 0, the same coding as PTB-XL's `sex` so the two corpora agree. Needs patients.csv.
- flag (binary, potassium abnormal): among the subject's potassium results (itemids 50971 chemistry and
  50822 blood gas) that carry a number (valuenum), the one(s) nearest in time to the ECG, if within
  `potassium_window_hours` before or after it. 1 when the lab marked it abnormal (flag == 'abnormal') or it
  lies outside [ref_range_lower, ref_range_upper]; several results at the same nearest distance give 1 if
  any is abnormal. null when there is no result in the window. Needs labevents.csv.
- report_label (multiclass arrhythmia) from the machine report lines, see `rhythm_label`.
Without patients.csv / labevents.csv those tasks are left out of the manifest (not written as all-null).

Selection: one_per_subject keeps each subject's first ECG, made explicit as the earliest ecg_time (then the
lowest study_id); EnECG's loader keeps the first row of each subject in its subset file. Selection comes
before labels, as in EnECG: a subject whose first ECG lacks a label is not replaced by a later ECG.
max_subjects keeps the subjects with the lowest subject_ids. EnECG: one_per_subject=True,
max_subjects=30000. Rows keep record_list.csv's order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data_manifests.ptbxl import csv_header, iter_csv_chunks, number_or_none, read_csv_table
from pipeline.errors import ManifestError

RR_NOT_MEASURED = 29999
POTASSIUM_ITEMIDS = (50971, 50822)
POTASSIUM_ITEMID_TEXT = [str(i) for i in POTASSIUM_ITEMIDS]
RHYTHM_CLASSES = ("sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia", "atrial_fibrillation",
                  "atrial_flutter", "other")
# A line names one of the five rhythms when one of these phrases occurs in it; the leftmost phrase decides,
# so "Atrial fibrillation has replaced Sinus rhythm" is atrial fibrillation and the reverse is sinus rhythm.
_NAMED_RHYTHMS = re.compile(
    r"atrial fibrillation|atrial flutter|sinus tachycardia|sinus bradycardia|sinus rhythm", re.IGNORECASE)
# Any other line with one of these words states some other rhythm ("Sinus arrhythmia", "Junctional rhythm",
# "Ventricular paced", "Supraventricular tachycardia", "Electronic pacemaker", ...).
_OTHER_RHYTHM = re.compile(r"rhythm|tachycardia|bradycardia|fibrillation|flutter|paced|pacemaker|pacing",
                           re.IGNORECASE)


def rhythm_label(report_lines: Sequence[str]) -> str | None:
    """The arrhythmia class of one ECG from its machine report lines (report_0, report_1, ... in order).

    The first line that states a rhythm wins. It is one of sinus_rhythm, sinus_bradycardia (also "Marked
    sinus bradycardia"), sinus_tachycardia, atrial_fibrillation, atrial_flutter when it contains that phrase
    (case-insensitive; the leftmost phrase in the line if several), else `other` when it contains a rhythm
    word (rhythm, tachycardia, bradycardia, fibrillation, flutter, paced, pacemaker, pacing). A report with no
    rhythm statement ("Borderline ECG" alone, or no report) is null: unknown, not `other`.
    """
    for line in report_lines:
        named = _NAMED_RHYTHMS.search(line)
        if named:
            return named.group(0).lower().replace(" ", "_")
        if _OTHER_RHYTHM.search(line):
            return "other"
    return None


def build_mimic_iv_ecg_manifest(ecg_root: str | os.PathLike, *, patients_csv: str | os.PathLike | None = None,
                                labevents_csv: str | os.PathLike | None = None,
                                potassium_window_hours: float = 24.0, one_per_subject: bool = False,
                                max_subjects: int | None = None,
                                labevents_chunk_rows: int = 1_000_000) -> tuple[list[dict], dict]:
    """MIMIC-IV-ECG manifest rows and tasks (see the module docstring for every definition).

    ecg_root: the MIMIC-IV-ECG folder (record_list.csv, machine_measurements.csv, files/); record paths in
        the manifest are relative to it.
    patients_csv, labevents_csv: MIMIC-IV hosp tables; without them the age/gender and flag tasks are absent.
    potassium_window_hours: how far (before or after the ECG) a potassium result may be to count.
    one_per_subject, max_subjects: EnECG's selection is one_per_subject=True, max_subjects=30000.
    labevents_chunk_rows: rows of labevents read at a time (memory bound).
    """
    root = Path(ecg_root)
    records = read_csv_table(root / "record_list.csv", ["subject_id", "study_id", "ecg_time", "path"])
    subjects, studies = records.integers("subject_id"), records.integers("study_id")
    times = records.times("ecg_time", required=True)
    paths = records.record_paths("path")
    records.refuse_repeats("study_id", studies)
    keep = _select(subjects, studies, times, one_per_subject, max_subjects)
    subjects, studies, times, paths = subjects[keep], studies[keep], times.iloc[keep], paths[keep]

    rr, reports = _machine_measurements(root / "machine_measurements.csv", studies)
    rows = [{"record_id": str(study), "subject_id": str(subject), "path": path, "rr_interval": r}
            for study, subject, path, r in zip(studies, subjects, paths, rr)]
    tasks = {"rr_interval": {"type": "regression", "label": "rr_interval"}}

    if patients_csv is not None:
        ages, genders = _demographics(Path(patients_csv), subjects, times)
        for row, age, gender in zip(rows, ages, genders):
            row["age"], row["gender"] = age, gender
        tasks["age"] = {"type": "regression", "label": "age"}
        tasks["gender"] = {"type": "binary", "label": "gender"}

    if labevents_csv is not None:
        window = np.timedelta64(int(round(potassium_window_hours * 3600)), "s")
        flags = _potassium_flags(Path(labevents_csv), subjects, times, window, labevents_chunk_rows)
        for row, flag in zip(rows, flags):
            row["flag"] = flag
        tasks["flag"] = {"type": "binary", "label": "flag"}

    for row, report in zip(rows, reports):
        row["report_label"] = report
    tasks["report_label"] = {"type": "multiclass", "label": "report_label", "classes": list(RHYTHM_CLASSES)}
    return rows, tasks


def _select(subjects: np.ndarray, studies: np.ndarray, times: pd.Series, one_per_subject: bool,
            max_subjects: int | None) -> np.ndarray:
    """Indices of the record_list rows to keep, in file order."""
    keep = np.ones(len(subjects), dtype=bool)
    if max_subjects is not None:
        keep &= np.isin(subjects, np.unique(subjects)[:max_subjects])
    if one_per_subject:
        order = np.lexsort((studies, times.to_numpy(), subjects))
        _, first = np.unique(subjects[order], return_index=True)
        first_ecg = np.zeros(len(subjects), dtype=bool)
        first_ecg[order[first]] = True
        keep &= first_ecg
    return np.flatnonzero(keep)


def _machine_measurements(path: Path, studies: np.ndarray) -> tuple[list[float | None], list[str | None]]:
    """rr_interval (null for 29999 or no row) and report_label per study, in the order of `studies`."""
    report_columns = sorted((c for c in csv_header(path) if re.fullmatch(r"report_\d+", c)),
                            key=lambda c: int(c.split("_")[1]))
    if not report_columns:
        raise ManifestError(f"{path}: no report_0, report_1, ... columns; is this MIMIC-IV-ECG's "
                            "machine_measurements.csv?")
    table = read_csv_table(path, ["study_id", "rr_interval", *report_columns])
    measured = table.integers("study_id")
    table.refuse_repeats("study_id", measured)
    # a new array, not an in-place write: numbers() may hand back pandas' read-only buffer (pandas >= 3)
    rr = table.numbers("rr_interval")
    rr = np.where(rr == RR_NOT_MEASURED, np.nan, rr)
    lines = np.stack([table.text(c) for c in report_columns], axis=1)
    where = pd.Series(np.arange(len(measured)), index=measured).reindex(studies).to_numpy()
    rr_out, reports = [], []
    for i in where:
        if np.isnan(i):  # no machine_measurements row for this study
            rr_out.append(None)
            reports.append(None)
        else:
            rr_out.append(number_or_none(rr[int(i)]))
            reports.append(rhythm_label([line for line in lines[int(i)] if line]))
    return rr_out, reports


def _demographics(path: Path, subjects: np.ndarray, times: pd.Series) -> tuple[list, list]:
    """Age at each ECG and gender (F=1, M=0) from MIMIC-IV patients; null for a subject not in it."""
    table = read_csv_table(path, ["subject_id", "gender", "anchor_age", "anchor_year"])
    ids = table.integers("subject_id")
    table.refuse_repeats("subject_id", ids)
    gender_text = table.text("gender", required=True)
    coded = {"F": 1, "M": 0}
    for i, g in enumerate(gender_text):
        if g not in coded:
            raise table.error(i, "gender", f"{g!r} is neither 'F' nor 'M'")
    anchor_age = table.numbers("anchor_age", required=True)
    anchor_year = table.numbers("anchor_year", required=True)
    where = pd.Series(np.arange(len(ids)), index=ids).reindex(subjects).to_numpy()
    years = times.dt.year.to_numpy()
    ages, genders = [], []
    for i, year in zip(where, years):
        if np.isnan(i):
            ages.append(None)
            genders.append(None)
        else:
            i = int(i)
            ages.append(float(anchor_age[i] + (year - anchor_year[i])))
            genders.append(coded[gender_text[i]])
    return ages, genders


def _potassium_flags(path: Path, subjects: np.ndarray, times: pd.Series, window: np.timedelta64,
                     chunk_rows: int) -> list[int | None]:
    """Potassium abnormal flag per ECG (see the module docstring)."""
    labs = _potassium_results(path, np.unique(subjects), chunk_rows)
    ecg_times = times.to_numpy().astype("datetime64[s]")
    flags = []
    for subject, ecg_time in zip(subjects, ecg_times):
        results = labs.get(subject)
        if results is None:
            flags.append(None)
            continue
        lab_times, abnormal = results
        gap = np.abs(lab_times - ecg_time)
        nearest = gap.min()
        flags.append(int(abnormal[gap == nearest].any()) if nearest <= window else None)
    return flags


def _potassium_results(path: Path, subjects: np.ndarray, chunk_rows: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """subject -> (chart times, abnormal) of its potassium results that carry a number."""
    columns = ["subject_id", "itemid", "charttime", "valuenum", "ref_range_lower", "ref_range_upper", "flag"]
    found_subjects, found_times, found_abnormal = [], [], []
    for chunk in iter_csv_chunks(path, columns, chunk_rows):
        # itemid is matched as text (MIMIC writes plain integers): parsing 150 million ids would dominate
        potassium = chunk.subset(np.flatnonzero(chunk.frame["itemid"].isin(POTASSIUM_ITEMID_TEXT).to_numpy()))
        value = potassium.numbers("valuenum")
        usable = np.flatnonzero(np.isin(potassium.integers("subject_id"), subjects) & ~np.isnan(value))
        if not len(usable):
            continue
        potassium, value = potassium.subset(usable), value[usable]
        lower, upper = potassium.numbers("ref_range_lower"), potassium.numbers("ref_range_upper")
        flagged = np.array([f.lower() == "abnormal" for f in potassium.text("flag")], dtype=bool)
        found_subjects.append(potassium.integers("subject_id"))
        found_times.append(potassium.times("charttime", required=True).to_numpy().astype("datetime64[s]"))
        found_abnormal.append(flagged | (value < lower) | (value > upper))  # a missing bound never flags
    if not found_subjects:
        return {}
    subject = np.concatenate(found_subjects)
    order = np.argsort(subject, kind="stable")
    subject, chart, abnormal = subject[order], np.concatenate(found_times)[order], np.concatenate(found_abnormal)[order]
    starts = np.flatnonzero(np.r_[True, subject[1:] != subject[:-1]])
    ends = np.r_[starts[1:], len(subject)]
    return {int(subject[s]): (chart[s:e], abnormal[s:e]) for s, e in zip(starts, ends)}
