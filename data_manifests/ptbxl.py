"""PTB-XL manifests, from PhysioNet's release folder or from a plain one-row-per-record label table.

A manifest is JSONL, one object per ECG:
    {"record_id": str, "subject_id": str, "path": WFDB record without extension, relative to the data root,
     "fold": int (optional), <label fields>}
with labels as: regression -> number, binary -> 0/1, multiclass -> class name, multilabel -> list of names,
missing -> null. A sidecar `<stem>.tasks.yaml` maps task name -> {type, label, classes}.

This module also holds what every builder shares (CSV reading with errors that name file, row and column;
the atomic writer), because the plain label-table builder is the generic case; `mimic_iv_ecg` imports them.

PTB-XL label choices, following the PTB-XL benchmark code (Strodthoff et al., `compute_label_aggregations`
and `select_data` in helme/ecg_ptbxl_benchmarking):
- A statement counts at ANY likelihood, 0 included: the benchmark takes the keys of `scp_codes`.
- `diagnostic` = statements flagged diagnostic in scp_statements.csv; `subclass` / `superclass` = their
  `diagnostic_subclass` / `diagnostic_class`; `form` / `rhythm` = statements flagged form / rhythm;
  `scp_all` = every statement. Names are PTB-XL's own (subclass `_AVB`, `NST_`, ...).
- The benchmark drops a record from a task when it has no statement of that kind, so by default an empty
  set is written as null (missing); `empty_as_missing=False` writes [] (all classes negative) instead.
- `classes` lists the classes present in the data, sorted (the benchmark fits its binarizer on the data;
  its `min_samples` filter is 0, i.e. keeps every present class).
- age 300 is PTB-XL's code for "older than 89"; it is written as 90, the youngest age it can mean.
- sex: 1 = female, 0 = male, as PTB-XL codes it (MIMIC-IV-ECG `gender` uses the same coding).
- fold = strat_fold (1-8 train, 9 validation, 10 test; patient-wise); subject_id = patient_id as an
  integer string ("15709", not "15709.0").
"""

from __future__ import annotations

import ast
import csv
import gzip
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.errors import EnECGError, ManifestError
from pipeline.manifests import tasks_path
from pipeline.manifests import write_manifest as write_jsonl
from pipeline.stores import atomic_path

_FLOAT_INTEGER = re.compile(r"^([+-]?\d+)\.0*$")
TASK_TYPES = ("regression", "binary", "multiclass", "multilabel")
PTBXL_SETS = ("scp_all", "diagnostic", "subclass", "superclass", "form", "rhythm")
PTBXL_AGE_OVER_89 = 300
PTBXL_AGE_OVER_89_AS = 90
# The label-table form of PTB-XL (e.g. shared/data/ptbxl-100hz/labels.csv): column -> task type.
PTBXL_TABLE_TASKS = {"age": "regression", "sex": "binary", "scp_all": "multilabel", "superclass": "multilabel",
                     "subclass": "multilabel", "form": "multilabel", "rhythm": "multilabel"}


# ---------------------------------------------------------------------------------------------------------
# CSV reading: every cell is read as text, so a malformed cell is found by us (with its row and column)
# instead of silently becoming NaN or an object column.


@dataclass
class CsvTable:
    """Rows of one CSV file (or part of it) as text; parsing methods raise ManifestError naming the file,
    the row (data rows count from 1 after the header, so row n is line n + 1) and the column.

    The arrays the parsing methods return may share pandas' memory, which pandas >= 3 (copy-on-write) marks
    read-only: treat them as read-only and derive new arrays (np.where, ...) instead of writing into them."""

    path: Path
    frame: pd.DataFrame
    row_numbers: np.ndarray | None = None  # file row number of each frame row; None: 1, 2, ...

    def __post_init__(self):
        if self.row_numbers is None:
            self.row_numbers = np.arange(1, len(self.frame) + 1)

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, positions: np.ndarray) -> CsvTable:
        """The rows at `positions`, still reporting errors by their row in the file."""
        return CsvTable(self.path, self.frame.iloc[positions].reset_index(drop=True), self.row_numbers[positions])

    def error(self, i: int, column: str, message: str) -> ManifestError:
        row = int(self.row_numbers[i])
        return ManifestError(f"{self.path}: row {row} (line {row + 1}), column '{column}': {message}")

    def refuse_repeats(self, column: str, values: np.ndarray) -> None:
        """Identifiers that must be unique (a repeated study or record would be counted twice)."""
        repeated = pd.Series(values).duplicated().to_numpy()
        if repeated.any():
            i = int(np.argmax(repeated))
            raise self.error(i, column, f"{self.frame[column].iloc[i].strip()!r} appears twice")

    def record_paths(self, column: str) -> np.ndarray:
        """WFDB record paths: relative, POSIX, without extension, so the manifest stays valid when the corpus
        moves and the reader can append .hea/.dat itself."""
        paths = self.text(column, required=True)
        for i, p in enumerate(paths):
            if p.startswith("/") or "\\" in p or ".." in p.split("/") or p.endswith((".hea", ".dat")):
                raise self.error(i, column, f"{p!r} is not a relative POSIX record path without extension")
        return paths

    def text(self, column: str, *, required: bool = False) -> np.ndarray:
        """Stripped strings ("" where empty)."""
        # a plain comprehension: several times faster than pandas' .str accessor on object columns
        values = np.array([v.strip() for v in self.frame[column].tolist()], dtype=object)
        if required:
            self._check_required(values == "", column, "is empty")
        return values

    def numbers(self, column: str, *, required: bool = False) -> np.ndarray:
        """float64, NaN where the cell is empty; a cell that is not a finite number is an error."""
        text = self.text(column)
        empty = text == ""
        values = pd.to_numeric(pd.Series(text).mask(empty), errors="coerce").to_numpy(dtype=float)
        bad = ~empty & ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise self.error(i, column, f"{text[i]!r} is not a number")
        if required:
            self._check_required(empty, column, "is empty (a number is required)")
        return values

    def integers(self, column: str) -> np.ndarray:
        """Required whole numbers as int64 ("15709.0" is 15709: pandas writes integer columns with NaNs so)."""
        values = self.numbers(column, required=True)
        fractional = values != np.round(values)
        if fractional.any():
            i = int(np.argmax(fractional))
            raise self.error(i, column, f"{self.frame[column].iloc[i].strip()!r} is not a whole number")
        return values.astype(np.int64)

    def identifiers(self, column: str) -> np.ndarray:
        """Required identifiers as text; an integer written as a float ("15709.0") is written "15709", so one
        subject never gets two spellings."""
        values = np.array([_FLOAT_INTEGER.sub(r"\1", v) for v in self.text(column)], dtype=object)
        self._check_required(values == "", column, "is empty (an identifier is required)")
        return values

    def times(self, column: str, *, required: bool = False) -> pd.Series:
        """Timestamps ('YYYY-MM-DD HH:MM:SS' as MIMIC writes them); NaT where empty."""
        text = self.text(column)
        empty = text == ""
        values = pd.to_datetime(pd.Series(text).mask(empty), format="%Y-%m-%d %H:%M:%S", errors="coerce")
        bad = ~empty & values.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise self.error(i, column, f"{text[i]!r} is not a time 'YYYY-MM-DD HH:MM:SS'")
        if required:
            self._check_required(empty, column, "is empty (a time is required)")
        return values

    def _check_required(self, empty: np.ndarray, column: str, message: str) -> None:
        if empty.any():
            raise self.error(int(np.argmax(empty)), column, message)


def csv_header(path: str | os.PathLike) -> list[str]:
    """The column names of a CSV file (plain or .gz), or ManifestError if it cannot be read."""
    path = Path(path)
    with _csv_errors(path), _open_text(path) as f:
        header = next(csv.reader(f), None)
    if not header:
        raise ManifestError(f"{path}: empty file, expected a header line with column names")
    return header


def read_csv_table(path: str | os.PathLike, columns: Sequence[str]) -> CsvTable:
    """Read the named columns of a CSV file (plain or .gz) as text.

    Every row must have as many fields as the header: pandas would silently pad a short row or drop the
    extra fields of a long one, shifting e.g. a report line into rr_interval. A missing file or column, or
    a row of the wrong width, is a ManifestError naming the file (and the row)."""
    path = Path(path)
    header = csv_header(path)
    _check_columns(path, header, columns)
    picks = [header.index(c) for c in columns]
    values: list[list[str]] = [[] for _ in columns]
    row = 0
    with _csv_errors(path), _open_text(path) as f:
        reader = csv.reader(f)
        next(reader)
        for fields in reader:
            if not fields:  # a blank line, as pandas skips it
                continue
            row += 1
            if len(fields) != len(header):
                raise ManifestError(f"{path}: row {row} (line {reader.line_num}) has {len(fields)} fields, "
                                    f"the header has {len(header)}; is a comma inside an unquoted field?")
            for column, i in zip(values, picks):
                column.append(fields[i])
    return CsvTable(path, pd.DataFrame(dict(zip(columns, values)), dtype=object))


def iter_csv_chunks(path: str | os.PathLike, columns: Sequence[str], chunk_rows: int) -> Iterator[CsvTable]:
    """The named columns in chunks of chunk_rows rows, for tables too big to read at once (MIMIC labevents,
    ~150 million rows). pandas' C reader is used for speed, so rows are not checked for their field count:
    the caller must parse every cell it uses (a shifted row then fails to parse)."""
    path = Path(path)
    _check_columns(path, csv_header(path), columns)
    first_row = 1
    with _csv_errors(path):
        for frame in pd.read_csv(path, usecols=list(columns), dtype=str, keep_default_na=False,
                                 na_filter=False, chunksize=chunk_rows):
            yield CsvTable(path, frame, np.arange(first_row, first_row + len(frame)))
            first_row += len(frame)


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _check_columns(path: Path, header: list[str], columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; the header has {header}")


@contextmanager
def _csv_errors(path: Path) -> Iterator[None]:
    """Turn pandas', csv's and the OS's reading errors into a ManifestError that names the file."""
    try:
        yield
    except FileNotFoundError as error:
        raise ManifestError(f"{path}: file not found") from error
    except (csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
            EOFError) as error:
        raise ManifestError(f"{path}: cannot be read as CSV: {error}") from error


# ---------------------------------------------------------------------------------------------------------
# Writing


def write_manifest(rows: Sequence[Mapping], tasks: Mapping[str, Mapping], out_path: str | os.PathLike) -> Path:
    """Write `rows` as JSONL to out_path and `tasks` to tasks_path(out_path), each atomically (temp file +
    os.replace), so a killed build never leaves a half manifest that a later stage would take as complete.
    The sidecar is written first: whenever the manifest exists, its tasks do too. Returns out_path."""
    out_path = Path(out_path)
    seen: set[str] = set()
    for n, row in enumerate(rows, 1):
        for key in ("record_id", "subject_id", "path"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise ManifestError(f"manifest row {n}: '{key}' must be a non-empty string, got {row.get(key)!r}")
        if row["record_id"] in seen:
            raise ManifestError(f"manifest row {n}: record_id {row['record_id']!r} is not unique")
        seen.add(row["record_id"])
    for name, task in tasks.items():
        if task.get("type") not in TASK_TYPES:
            raise ManifestError(f"task {name!r}: type {task.get('type')!r} is not one of {TASK_TYPES}")
    with atomic_path(tasks_path(out_path)) as tmp:
        tmp.write_text(yaml.safe_dump({k: dict(v) for k, v in tasks.items()}, sort_keys=False))
    write_jsonl(rows, out_path)
    return out_path


def number_or_none(value: float) -> float | None:
    """JSON has no NaN: a missing number is null."""
    return None if np.isnan(value) else float(value)


def multilabel_task(name: str, values: Sequence[list[str] | None]) -> dict:
    """A multilabel task whose classes are those present, sorted."""
    classes = sorted({c for v in values if v for c in v})
    return {"type": "multilabel", "label": name, "classes": classes}


# ---------------------------------------------------------------------------------------------------------
# Builders


def build_ptbxl_manifest(source: str | os.PathLike, *, sampling_rate: int = 500,
                         empty_as_missing: bool = True) -> tuple[list[dict], dict]:
    """PTB-XL manifest rows and tasks.

    source: PhysioNet's PTB-XL folder (ptbxl_database.csv, scp_statements.csv, records100/, records500/),
        or a PTB-XL label table (a .csv file in the form of shared/data/ptbxl-100hz/labels.csv: ecg_id,
        patient_id, strat_fold, age, sex, filename_lr, filename_hr, scp_all, superclass, subclass, form,
        rhythm with ';'-joined lists). Record paths are relative to the PTB-XL folder in both cases.
    sampling_rate: 500 -> records500/ (filename_hr), 100 -> records100/ (filename_lr).
    empty_as_missing: write a record with no statement of a set as null for that task (the benchmark's
        choice), not as [].

    Tasks from the folder: age, sex, scp_all, diagnostic, subclass, superclass, form, rhythm. The label table
    has no `diagnostic` column, so that task is absent there, and its subclass/form names drop PTB-XL's
    underscores (`AVB` for `_AVB`) as its source does.
    """
    if sampling_rate not in (100, 500):
        raise EnECGError(f"PTB-XL sampling_rate must be 100 or 500, got {sampling_rate}")
    path_column = "filename_hr" if sampling_rate == 500 else "filename_lr"
    source = Path(source)
    if not source.exists():
        raise ManifestError(f"{source}: not found; expected PhysioNet's PTB-XL folder or a PTB-XL label table")
    if source.is_dir():
        return _ptbxl_from_release(source, path_column, empty_as_missing)
    rows, tasks = build_label_table_manifest(
        source, tasks=PTBXL_TABLE_TASKS, id_column="ecg_id", path_column=path_column,
        subject_column="patient_id", fold_column="strat_fold", empty_as_missing=empty_as_missing)
    for row in rows:
        row["age"] = _ptbxl_age(row["age"])
    return rows, tasks


def build_label_table_manifest(table_csv: str | os.PathLike, *, tasks: Mapping[str, str], id_column: str = "id",
                               path_column: str = "path", subject_column: str = "subject",
                               fold_column: str | None = "fold", list_separator: str = ";",
                               empty_as_missing: bool = True) -> tuple[list[dict], dict]:
    """Manifest rows and tasks from a plain label table: one row per record with an id, a record path
    (relative to the data root, no extension), a subject, an optional fold and one column per task.

    tasks: label column -> task type. Cells: regression a number; binary 0 or 1; multiclass a class name;
    multilabel a `list_separator`-joined list. An empty cell is missing (null); an empty multilabel cell is
    null when empty_as_missing, else []. Multiclass/multilabel classes are those present, sorted.
    """
    for column, kind in tasks.items():
        if kind not in TASK_TYPES:
            raise EnECGError(f"label column {column!r}: task type {kind!r} is not one of {TASK_TYPES}")
    columns = [id_column, path_column, subject_column, *([fold_column] if fold_column else []), *tasks]
    table = read_csv_table(table_csv, columns)
    base = {"record_id": table.identifiers(id_column), "subject_id": table.identifiers(subject_column),
            "path": table.record_paths(path_column)}
    if fold_column:
        base["fold"] = [int(f) for f in table.integers(fold_column)]
    labels = {column: _table_labels(table, column, kind, list_separator, empty_as_missing)
              for column, kind in tasks.items()}
    rows = _rows(table, id_column, {**base, **labels})
    task_specs = {}
    for column, kind in tasks.items():
        if kind == "multilabel":
            task_specs[column] = multilabel_task(column, labels[column])
        elif kind == "multiclass":
            classes = sorted({v for v in labels[column] if v is not None})
            task_specs[column] = {"type": kind, "label": column, "classes": classes}
        else:
            task_specs[column] = {"type": kind, "label": column}
    return rows, task_specs


def _table_labels(table: CsvTable, column: str, kind: str, separator: str, empty_as_missing: bool) -> list:
    if kind == "regression":
        return [number_or_none(v) for v in table.numbers(column)]
    if kind == "binary":
        return _binary(table, column)
    text = table.text(column)
    if kind == "multiclass":
        return [v or None for v in text]
    lists = [sorted({c.strip() for c in v.split(separator) if c.strip()}) for v in text]
    return [None if (empty_as_missing and not v) else v for v in lists]


def _binary(table: CsvTable, column: str) -> list[int | None]:
    values = table.numbers(column)
    bad = ~np.isnan(values) & (values != 0) & (values != 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise table.error(i, column, f"{table.frame[column].iloc[i]!r} is not 0 or 1")
    return [None if np.isnan(v) else int(v) for v in values]


def _rows(table: CsvTable, id_column: str, fields: Mapping[str, Sequence]) -> list[dict]:
    """Zip column-wise fields into row dicts, refusing a repeated record id."""
    rows = [dict(zip(fields, values)) for values in zip(*fields.values())]
    table.refuse_repeats(id_column, fields["record_id"])
    return rows


def _ptbxl_age(age: float | None) -> float | None:
    return float(PTBXL_AGE_OVER_89_AS) if age == PTBXL_AGE_OVER_89 else age


@dataclass(frozen=True)
class _Statements:
    """What scp_statements.csv says about each SCP code."""

    superclass: dict[str, str]  # diagnostic code -> diagnostic_class ("" where none)
    subclass: dict[str, str]    # diagnostic code -> diagnostic_subclass ("" where none)
    form: frozenset[str]
    rhythm: frozenset[str]

    @classmethod
    def read(cls, path: Path) -> _Statements:
        columns = ["diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"]
        code = csv_header(path)[0]  # the code column has no name
        table = read_csv_table(path, [code, *columns])
        codes = table.text(code, required=True)
        flags = {c: table.numbers(c) == 1 for c in ("diagnostic", "form", "rhythm")}
        classes, subclasses = table.text("diagnostic_class"), table.text("diagnostic_subclass")
        diagnostic = flags["diagnostic"]
        return cls(superclass=dict(zip(codes[diagnostic], classes[diagnostic])),
                   subclass=dict(zip(codes[diagnostic], subclasses[diagnostic])),
                   form=frozenset(codes[flags["form"]]), rhythm=frozenset(codes[flags["rhythm"]]))

    def sets(self, codes: list[str]) -> dict[str, list[str]]:
        """The benchmark's label sets of one record, from its statement codes (any likelihood)."""
        return {
            "scp_all": sorted(set(codes)),
            "diagnostic": sorted({c for c in codes if c in self.superclass}),
            "subclass": sorted({self.subclass[c] for c in codes if self.subclass.get(c)}),
            "superclass": sorted({self.superclass[c] for c in codes if self.superclass.get(c)}),
            "form": sorted({c for c in codes if c in self.form}),
            "rhythm": sorted({c for c in codes if c in self.rhythm}),
        }


def _ptbxl_from_release(root: Path, path_column: str, empty_as_missing: bool) -> tuple[list[dict], dict]:
    statements = _Statements.read(root / "scp_statements.csv")
    table = read_csv_table(root / "ptbxl_database.csv",
                           ["ecg_id", "patient_id", "age", "sex", "scp_codes", "strat_fold", path_column])
    sets = [statements.sets(_scp_codes(table, i, text)) for i, text in enumerate(table.text("scp_codes"))]
    labels = {name: [None if (empty_as_missing and not s[name]) else s[name] for s in sets] for name in PTBXL_SETS}
    ages = [_ptbxl_age(number_or_none(a)) for a in table.numbers("age")]
    fields = {"record_id": table.identifiers("ecg_id"), "subject_id": table.identifiers("patient_id"),
              "path": table.record_paths(path_column), "fold": [int(f) for f in table.integers("strat_fold")],
              "age": ages, "sex": _binary(table, "sex"), **labels}
    rows = _rows(table, "ecg_id", fields)
    tasks = {"age": {"type": "regression", "label": "age"}, "sex": {"type": "binary", "label": "sex"},
             **{name: multilabel_task(name, labels[name]) for name in PTBXL_SETS}}
    return rows, tasks


def _scp_codes(table: CsvTable, i: int, text: str) -> list[str]:
    """The statement codes of one `scp_codes` cell, a Python dict literal {code: likelihood}."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as error:
        raise table.error(i, "scp_codes", f"{text!r} is not a dict literal {{code: likelihood}} ({error})")
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise table.error(i, "scp_codes", f"{text!r} is not a dict literal {{code: likelihood}}")
    return list(value)
