"""Reading and validating ECG manifests (JSONL, one object per ECG).

The schema is documented in data_manifests/README.md. Two forms are accepted:

- the project's own: `record_id`, `subject_id`, `path` (WFDB record without extension, relative to the data
  root), optional `fold`, and label fields at the top level;
- EnECG's subset files: `subject_id`, `ecg_path` and label fields (`age`, `gender`, `flag`, `rr_interval`,
  `report_label`, ...); the record id is then the record's file name.

Every problem is reported as a ManifestError naming the file, the line and the field, before any heavy work.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.errors import ManifestError
from pipeline.stores import atomic_path

RESERVED = ("record_id", "subject_id", "path", "ecg_path", "fold")


@dataclass(frozen=True)
class ManifestRecord:
    record_id: str
    subject_id: str
    path: str
    line: int
    fold: int | None = None
    labels: dict = field(default_factory=dict)


def _text(value: str, where: str, name: str) -> str:
    """Ids and paths are stored in Zarr and used as file names: valid UTF-8 (a JSON escape such as \\ud800
    gives a lone surrogate, which cannot be stored) without control characters (NUL breaks file calls)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"{where}: field {name!r} is not valid Unicode: {value!r}") from None
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ManifestError(f"{where}: field {name!r} holds a control character: {value!r}")
    return value


def _identifier(value, where: str, name: str) -> str:
    """Ids may be strings or whole numbers (EnECG writes subject_id as an int); 15709.0 becomes '15709'."""
    if isinstance(value, bool) or value is None:
        raise ManifestError(f"{where}: field {name!r} must be a string or an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ManifestError(f"{where}: field {name!r} must be a string or an integer, got {value!r}")
        value = int(value)
    if isinstance(value, (int, str)) and str(value).strip():
        return _text(str(value).strip(), where, name)
    raise ManifestError(f"{where}: field {name!r} must be a non-empty string or an integer, got {value!r}")


def _label(value, where: str, name: str):
    """Labels are numbers, strings, booleans, lists of strings (multilabel) or null (missing)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ManifestError(f"{where}: label {name!r} is {value!r}; write null for a missing label")
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ManifestError(
        f"{where}: label {name!r} has unsupported value {value!r}; use a number, a string, a list of strings or null"
    )


def _record_path(entry: dict, where: str) -> str:
    if "path" in entry:
        raw = entry["path"]
    elif "ecg_path" in entry:
        raw = entry["ecg_path"]
    else:
        raise ManifestError(f"{where}: missing required field 'path' (or EnECG's 'ecg_path')")
    if not isinstance(raw, str) or not raw.strip():
        raise ManifestError(f"{where}: field 'path' must be a non-empty string, got {raw!r}")
    path = PurePosixPath(_text(raw.strip(), where, "path").replace("\\", "/"))
    if path.suffix in (".hea", ".dat", ".mat"):
        path = path.with_suffix("")
    if ".." in path.parts:
        raise ManifestError(f"{where}: path {raw!r} leaves the data root ('..' is not allowed)")
    if not path.name:
        raise ManifestError(f"{where}: path {raw!r} names a folder, not a WFDB record")
    return str(path)


def parse_line(text: str, source: Path | str, line: int) -> ManifestRecord | None:
    """One manifest line -> a record (None for a blank line)."""
    where = f"{source}:{line}"
    if not text.strip():
        return None
    try:
        entry = json.loads(text.rstrip("\r\n"))  # the column of an error at the end then stays on this line
    except json.JSONDecodeError as error:
        raise ManifestError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
    except (ValueError, RecursionError) as error:  # an integer too long to convert, nesting too deep
        raise ManifestError(f"{where}: invalid JSON ({error})") from None
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    path = _record_path(entry, where)
    if "subject_id" not in entry:
        raise ManifestError(f"{where}: missing required field 'subject_id'")
    subject_id = _identifier(entry["subject_id"], where, "subject_id")
    record_id = _identifier(entry["record_id"], where, "record_id") if "record_id" in entry else PurePosixPath(path).name
    fold = entry.get("fold")
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int)):
        raise ManifestError(f"{where}: field 'fold' must be an integer, got {fold!r}")
    labels = {name: _label(value, where, name) for name, value in entry.items() if name not in RESERVED}
    return ManifestRecord(record_id, subject_id, path, line, fold, labels)


def read_manifest(path: Path) -> list[ManifestRecord]:
    """All records of a manifest, in file order; duplicate record ids are an error naming both lines."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; run `enecg demo-data` or `enecg manifest ...` first")
    records: list[ManifestRecord] = []
    first_line: dict[str, int] = {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:  # a byte-order mark (Excel, Notepad) is tolerated on the first line
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ManifestError(f"{path}:{number}: not UTF-8 text ({error.reason} at byte {error.start})") from None
            record = parse_line(text, path, number)
            if record is None:
                continue
            if record.record_id in first_line:
                raise ManifestError(
                    f"{path}:{number}: duplicate record_id {record.record_id!r} (first seen on line "
                    f"{first_line[record.record_id]}); record ids must be unique"
                )
            first_line[record.record_id] = number
            records.append(record)
    if not records:
        raise ManifestError(f"manifest {path} holds no records")
    return records


def resolve_record(root: Path, record_path: str) -> Path:
    """The record's path on disk; absolute manifest paths must still lie inside the data root.

    The check is on the path as written (normalised, symlinks not followed), so a data root whose folders
    link to another disk works, and checking 800k records costs no file-system calls.
    """
    root = Path(os.path.abspath(root))
    resolved = Path(os.path.normpath(root / record_path))
    if not resolved.is_relative_to(root):
        raise ManifestError(f"record path {record_path} lies outside the data root {root}; set data.root in params.yaml")
    return resolved


def tasks_path(manifest_path: str | os.PathLike) -> Path:
    """Where a manifest's task definitions live (params `data.tasks`): `ptbxl.jsonl` -> `ptbxl.tasks.yaml`."""
    return Path(manifest_path).with_suffix(".tasks.yaml")


def write_tasks(tasks: dict, manifest_path: str | os.PathLike) -> Path:
    """Write the task definitions beside a manifest, atomically; returns their path."""
    import yaml

    out = tasks_path(manifest_path)
    with atomic_path(out) as tmp:
        tmp.write_text(yaml.safe_dump({name: dict(definition) for name, definition in tasks.items()}, sort_keys=False))
    return out


def write_manifest(rows: list[dict], out: Path) -> None:
    """Write manifest rows as JSONL atomically (temp name, then rename); a NaN is a bug, never a label."""
    with atomic_path(Path(out)) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(dict(row), allow_nan=False) + "\n")
