"""Manifest reading: both accepted forms, and clear errors naming file, line and field."""

import json

import pytest

from pipeline.errors import ManifestError
from pipeline.manifests import read_manifest, resolve_record


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_project_form_and_enecg_form(tmp_path):
    manifest = write_lines(tmp_path / "m.jsonl", [
        {"record_id": "r1", "subject_id": 7, "path": "a/r1", "fold": 3, "age": 61.5, "labels": ["AFIB", "PVC"]},
        "",
        {"subject_id": 15709.0, "ecg_path": "files/p1000/p10000032/s40689238/40689238.hea", "flag": 1, "report_label": None},
    ])
    first, second = read_manifest(manifest)
    assert (first.record_id, first.subject_id, first.path, first.fold, first.line) == ("r1", "7", "a/r1", 3, 1)
    assert first.labels == {"age": 61.5, "labels": ("AFIB", "PVC")}
    assert (second.record_id, second.subject_id, second.line) == ("40689238", "15709", 3)
    assert second.path == "files/p1000/p10000032/s40689238/40689238"
    assert second.labels == {"flag": 1, "report_label": None}


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"record_id": "r2", "subject_id": "s", "path": "x"', "m.jsonl:2: invalid JSON"),
        ('["not", "an", "object"]', "m.jsonl:2: expected a JSON object"),
        ('{"record_id": "r2", "path": "x"}', "m.jsonl:2: missing required field 'subject_id'"),
        ('{"record_id": "r2", "subject_id": "s"}', "m.jsonl:2: missing required field 'path'"),
        ('{"record_id": "r2", "subject_id": "s", "path": "../x"}', "m.jsonl:2: path '../x' leaves the data root"),
        ('{"record_id": "r2", "subject_id": 1.5, "path": "x"}', "m.jsonl:2: field 'subject_id'"),
        ('{"record_id": "r2", "subject_id": "s", "path": "x", "fold": "9"}', "m.jsonl:2: field 'fold'"),
        ('{"record_id": "r2", "subject_id": "s", "path": "x", "age": {"v": 1}}', "m.jsonl:2: label 'age'"),
        ('{"record_id": "r1", "subject_id": "s", "path": "x"}', "m.jsonl:2: duplicate record_id 'r1' (first seen on line 1)"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, message):
    manifest = write_lines(tmp_path / "m.jsonl", [{"record_id": "r1", "subject_id": "s", "path": "r1"}, line])
    with pytest.raises(ManifestError) as error:
        read_manifest(manifest)
    assert message in str(error.value)


def test_missing_and_empty_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "absent.jsonl")
    with pytest.raises(ManifestError, match="holds no records"):
        read_manifest(write_lines(tmp_path / "empty.jsonl", [""]))


def test_absolute_paths_must_stay_inside_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert resolve_record(root, str(root / "a" / "r1")) == (root / "a" / "r1").resolve()
    with pytest.raises(ManifestError, match="outside the data root"):
        resolve_record(root, str(tmp_path / "elsewhere" / "r1"))
