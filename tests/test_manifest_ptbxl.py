"""PTB-XL manifest builders: the PhysioNet release folder (shared ptbxl-500) and the plain label table
(shared ptbxl-100hz/labels.csv), checked by counts, by hand-worked labels, and against each other; plus
small tables written here for the generic label-table builder and its errors."""

import pytest

from data_manifests.ptbxl import build_label_table_manifest, build_ptbxl_manifest
from pipeline.errors import EnECGError, ManifestError
from tests.conftest import DATA, need_shared

PTBXL_500 = DATA / "ptbxl-500"
LABELS_CSV = DATA / "ptbxl-100hz" / "labels.csv"


@pytest.fixture(scope="module")
def release():
    return build_ptbxl_manifest(need_shared(PTBXL_500), sampling_rate=500)


@pytest.fixture(scope="module")
def table():
    return build_ptbxl_manifest(need_shared(LABELS_CSV), sampling_rate=100)


def by_id(rows):
    return {r["record_id"]: r for r in rows}


def test_release_folder(release):
    rows, tasks = release
    assert len(rows) == 500 and [r["record_id"] for r in rows] == [str(i) for i in range(1, 501)]
    assert {name: t["type"] for name, t in tasks.items()} == {
        "age": "regression", "sex": "binary", "scp_all": "multilabel", "diagnostic": "multilabel",
        "subclass": "multilabel", "superclass": "multilabel", "form": "multilabel", "rhythm": "multilabel"}
    assert tasks["superclass"]["classes"] == ["CD", "HYP", "MI", "NORM", "STTC"]
    for row in rows:
        assert (PTBXL_500 / (row["path"] + ".hea")).exists()
    rows100, _ = build_ptbxl_manifest(PTBXL_500, sampling_rate=100)
    assert rows100[0]["path"] == "records100/00000/00001_lr"
    assert all((PTBXL_500 / (r["path"] + ".hea")).exists() for r in rows100)


def test_release_labels_by_hand(release):
    rows = by_id(release[0])
    assert rows["1"] == {
        "record_id": "1", "subject_id": "15709", "path": "records500/00000/00001_hr", "fold": 3, "age": 56.0,
        "sex": 1, "scp_all": ["LVOLT", "NORM", "SR"], "diagnostic": ["NORM"], "subclass": ["NORM"],
        "superclass": ["NORM"], "form": ["LVOLT"], "rhythm": ["SR"]}
    # {'AFLT': 100, 'ABQRS': 0, 'AFIB': 0}: no diagnostic statement -> missing; AFIB counts at likelihood 0
    r = rows["17"]
    assert (r["superclass"], r["subclass"], r["diagnostic"]) == (None, None, None)
    assert (r["scp_all"], r["form"], r["rhythm"]) == (["ABQRS", "AFIB", "AFLT"], ["ABQRS"], ["AFIB", "AFLT"])
    # {'IMI': 35, 'ISCLA': 100, 'SEHYP': 50, 'SR': 0}: ISCLA is STTC / ISCA, SEHYP is HYP / SEHYP
    assert rows["146"]["superclass"] == ["HYP", "MI", "STTC"]
    assert rows["146"]["subclass"] == ["IMI", "ISCA", "SEHYP"]
    # {'LVH': 50, 'ISC_': 100, 'LAO/LAE': 50, '1AVB': 100, 'NST_': 0, 'LPR': 0, 'SR': 0, 'AFLT': 0}:
    # 1AVB is CD / _AVB; NST_ (likelihood 0) is diagnostic STTC / NST_ and also a form statement
    r = rows["347"]
    assert r["superclass"] == ["CD", "HYP", "STTC"]
    assert r["subclass"] == ["ISC_", "LAO/LAE", "LVH", "NST_", "_AVB"]
    assert (r["form"], r["rhythm"]) == (["LPR", "NST_"], ["AFLT", "SR"])
    assert (r["subject_id"], r["fold"], r["age"], r["sex"]) == ("449", 10, 75.0, 0)


def test_label_table_counts(table):
    rows, tasks = table
    assert len(rows) == 9974
    missing = {name: sum(r[name] is None for r in rows) for name in tasks}
    assert missing == {"age": 0, "sex": 0, "scp_all": 0, "superclass": 135, "subclass": 135, "form": 6067,
                       "rhythm": 416}
    sizes = [len(tasks[n]["classes"]) for n in ("scp_all", "superclass", "subclass", "form", "rhythm")]
    assert sizes == [71, 5, 23, 19, 12]
    assert sum(r["age"] == 90.0 for r in rows) == 150 and max(r["age"] for r in rows) == 90.0  # 300 -> 90
    folds = [r["fold"] for r in rows]
    assert (sum(f <= 8 for f in folds), folds.count(9), folds.count(10)) == (7758, 1090, 1126)
    fold_of = {}
    for r in rows:
        assert fold_of.setdefault(r["subject_id"], r["fold"]) == r["fold"], "a patient in two folds"
    assert len(fold_of) == 8880 and all(s.isdigit() for s in fold_of)  # "15709", never "15709.0"
    r = by_id(rows)["1"]
    assert (r["subject_id"], r["path"], r["superclass"]) == ("15709", "records100/00000/00001_lr", ["NORM"])


def test_both_builders_agree_on_shared_records(table):
    rows100, _ = build_ptbxl_manifest(need_shared(PTBXL_500), sampling_rate=100)
    release, labels = by_id(rows100), by_id(table[0])
    shared = set(release) & set(labels)
    assert len(shared) == 488  # ids 1-500 less the 12 the label table lacks (137, 139-143, 145, 456, ...)

    def plain(names):  # the label table's source drops PTB-XL's underscores (`_AVB` -> `AVB`)
        return None if names is None else sorted(n.strip("_") for n in names)

    age_differs = {}
    for rid in shared:
        a, b = release[rid], labels[rid]
        for field in ("subject_id", "path", "fold", "sex", "scp_all", "superclass", "rhythm"):
            assert a[field] == b[field], (rid, field)
        for field in ("subclass", "form"):
            assert plain(a[field]) == b[field], (rid, field)
        if a["age"] != b["age"]:
            age_differs[rid] = (a["age"], b["age"])
    # The sources differ only on over-89 patients: the table codes them 300 (written as 90), while this copy
    # of ptbxl_database.csv gives nothing or 91 (and 90 for record 351, which therefore agrees).
    assert age_differs == {"108": (None, 90.0), "255": (None, 90.0), "256": (None, 90.0), "346": (None, 90.0),
                           "279": (91.0, 90.0), "282": (91.0, 90.0)}


def write(path, text):
    path.write_text(text)
    return path


def test_generic_label_table(tmp_path):
    csv_path = write(tmp_path / "labels.csv", "id,path,subject,fold,hr,afib,rhythm,codes\n"
                     "a1,rec/a1,7.0,1,61.5,0,SR,X;Y\n"
                     "a2,rec/a2,8,2,,1,AF,\n"
                     "a3,rec/a3,7,1,70,,,Y\n")
    tasks = {"hr": "regression", "afib": "binary", "rhythm": "multiclass", "codes": "multilabel"}
    rows, specs = build_label_table_manifest(csv_path, tasks=tasks)
    assert rows == [
        {"record_id": "a1", "subject_id": "7", "path": "rec/a1", "fold": 1,  # "7.0" is subject "7"
         "hr": 61.5, "afib": 0, "rhythm": "SR", "codes": ["X", "Y"]},
        {"record_id": "a2", "subject_id": "8", "path": "rec/a2", "fold": 2,
         "hr": None, "afib": 1, "rhythm": "AF", "codes": None},
        {"record_id": "a3", "subject_id": "7", "path": "rec/a3", "fold": 1,
         "hr": 70.0, "afib": None, "rhythm": None, "codes": ["Y"]},
    ]
    assert specs["rhythm"] == {"type": "multiclass", "label": "rhythm", "classes": ["AF", "SR"]}
    assert specs["codes"] == {"type": "multilabel", "label": "codes", "classes": ["X", "Y"]}
    rows, _ = build_label_table_manifest(csv_path, tasks=tasks, empty_as_missing=False)
    assert rows[1]["codes"] == []


@pytest.mark.parametrize("line, message", [
    ("a2,rec/a2,8,1,2", "row 2 (line 3), column 'afib': '2' is not 0 or 1"),
    ("a2,rec/a2.dat,8,1,1", "row 2 (line 3), column 'path': 'rec/a2.dat' is not a relative POSIX record path"),
    ("a2,/data/a2,8,1,1", "row 2 (line 3), column 'path'"),
    ("a1,rec/a2,8,1,1", "row 2 (line 3), column 'id': 'a1' appears twice"),
    ("a2,rec/a2,,1,1", "row 2 (line 3), column 'subject': is empty"),
    ("a2,rec/a2,8,1.5,1", "row 2 (line 3), column 'fold': '1.5' is not a whole number"),
    ("a2,rec/a2,8,1", "row 2 (line 3) has 4 fields, the header has 5"),
])
def test_label_table_errors(tmp_path, line, message):
    csv_path = write(tmp_path / "labels.csv", f"id,path,subject,fold,afib\na1,rec/a1,7,1,0\n{line}\n")
    with pytest.raises(ManifestError) as error:
        build_label_table_manifest(csv_path, tasks={"afib": "binary"}, id_column="id")
    assert str(error.value).startswith(f"{csv_path}: ") and message in str(error.value)


def test_release_errors(tmp_path):
    need_shared(PTBXL_500)
    (tmp_path / "scp_statements.csv").write_bytes((PTBXL_500 / "scp_statements.csv").read_bytes())
    lines = (PTBXL_500 / "ptbxl_database.csv").read_text().splitlines()[:4]
    lines[3] = lines[3].replace("{'NORM': 100.0, 'SR': 0.0}", "{'NORM': 100.0, 'SR': 0.0")
    write(tmp_path / "ptbxl_database.csv", "\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"ptbxl_database.csv: row 3 \(line 4\), column 'scp_codes'"):
        build_ptbxl_manifest(tmp_path)
    with pytest.raises(EnECGError, match="sampling_rate must be 100 or 500"):
        build_ptbxl_manifest(tmp_path, sampling_rate=250)
    with pytest.raises(ManifestError, match="nowhere: not found; expected PhysioNet's PTB-XL folder"):
        build_ptbxl_manifest(tmp_path / "nowhere")
