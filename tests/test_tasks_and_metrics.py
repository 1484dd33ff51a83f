"""Task targets from manifest labels, subject-wise splits, and metrics with bootstrap intervals."""

import numpy as np
import pytest

from pipeline.errors import ManifestError
from pipeline.manifests import ManifestRecord
from pipeline.stage_two.metrics import bootstrap_metrics, compute_metrics
from pipeline.splits import make_split
from pipeline.tasks import Task, targets, task_from_params

DEFINITIONS = {
    "rr": {"type": "regression", "label": "rr_interval"},
    "flag": {"type": "binary"},
    "rhythm": {"type": "multiclass", "label": "report_label", "classes": ["SR", "AF", "OTHER"]},
    "super": {"type": "multilabel", "label": "superclass", "classes": ["NORM", "MI", "CD"]},
}


def record(line, **labels):
    return ManifestRecord(f"r{line}", "s", "p", line, None, labels)


def test_targets_for_every_task_type():
    records = [
        record(1, rr_interval=800.0, flag=1, report_label="AF", superclass=("MI", "CD")),
        record(2, rr_interval=None, flag=False, report_label="SR", superclass=()),
        record(3),
    ]
    rr, present = targets(task_from_params("rr", DEFINITIONS), records)
    assert rr[0] == 800.0 and present.tolist() == [True, False, False]
    flag, present = targets(task_from_params("flag", DEFINITIONS), records)
    assert flag[:2].tolist() == [1.0, 0.0] and present.tolist() == [True, True, False]
    rhythm, _ = targets(task_from_params("rhythm", DEFINITIONS), records)
    assert rhythm.tolist() == [1, 0, -1]
    superclass, present = targets(task_from_params("super", DEFINITIONS), records)
    assert superclass.tolist()[:2] == [[0, 1, 1], [0, 0, 0]] and present.tolist() == [True, True, False]


@pytest.mark.parametrize("task, value", [("rr", "fast"), ("flag", 2), ("rhythm", "AVB"), ("super", ("XX",))])
def test_wrong_label_values_name_line_record_and_field(task, value):
    label = DEFINITIONS[task].get("label", task)
    with pytest.raises(ManifestError, match=rf"manifest line 7 \(record r7\): label '{label}'"):
        targets(task_from_params(task, DEFINITIONS), [record(7, **{label: value})])


def test_unknown_task_and_bad_definitions():
    with pytest.raises(ManifestError, match="unknown task 'potassium'"):
        task_from_params("potassium", DEFINITIONS)
    with pytest.raises(ManifestError, match="classes must list at least 2"):
        task_from_params("x", {"x": {"type": "multiclass"}})


def test_subject_split_never_straddles_and_folds_partition_the_training_rows():
    rng = np.random.default_rng(0)
    subjects = np.array([f"s{i}" for i in rng.integers(0, 30, 200)])
    usable = rng.random(200) > 0.1
    split = make_split(subjects, usable, {"method": "subject", "test_fraction": 0.25, "k": 3, "seed": 1})
    assert not set(subjects[split.train]) & set(subjects[split.test])
    assert set(split.train) | set(split.test) == set(np.flatnonzero(usable))
    for fold in range(3):
        held = split.train[split.fold_of_train == fold]
        rest = split.train[split.fold_of_train != fold]
        assert len(held) and not set(subjects[held]) & set(subjects[rest])


def test_cv_split_tests_every_usable_row_exactly_once_over_its_folds():
    rng = np.random.default_rng(2)
    subjects = np.array([f"s{i}" for i in rng.integers(0, 40, 300)])
    usable = rng.random(300) > 0.1
    tested = []
    for fold in range(3):
        split = make_split(subjects, usable, {"method": "cv", "k": 3, "test_fold": fold, "seed": 0})
        assert not set(subjects[split.train]) & set(subjects[split.test])
        assert set(split.train) | set(split.test) == set(np.flatnonzero(usable))
        assert set(split.fold_of_train) == {0, 1, 2}  # inner folds for the out-of-fold predictions
        tested += list(split.test)
    assert sorted(tested) == list(np.flatnonzero(usable))


def test_fold_split_refuses_a_subject_in_two_folds():
    subjects = np.array(["a", "a", "b", "c", "d", "e"])
    folds = np.array([1, 10, 1, 2, 10, 3])
    with pytest.raises(ManifestError, match=r"subjects \['a'\] have records in both"):
        make_split(subjects, np.ones(6, bool), {"method": "fold", "train_folds": [1, 2, 3], "test_folds": [10], "k": 2}, folds)


def test_metrics_match_hand_computed_values_and_bootstrap_brackets_them():
    regression = Task("rr", "regression", "rr")
    target = np.array([1.0, 2.0, 3.0, 4.0])
    got = compute_metrics(regression, target, np.array([[1.5], [2.0], [2.5], [4.0]]))
    assert got["mae"] == pytest.approx(0.25) and got["mse"] == pytest.approx(0.125)
    binary = Task("flag", "binary", "flag")
    truth = np.array([0, 0, 1, 1, 1, 0], dtype=float)
    probability = np.array([[0.1], [0.6], [0.8], [0.7], [0.4], [0.2]])
    got = compute_metrics(binary, truth, probability)
    assert got["accuracy"] == pytest.approx(4 / 6) and got["auroc"] == pytest.approx(8 / 9)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 300).astype(float)
    probability = np.clip(truth * 0.6 + rng.random(300) * 0.5, 0, 1)[:, None]
    boot = bootstrap_metrics(binary, truth, probability, resamples=200, confidence=0.95, seed=0)
    for interval in boot.values():
        assert interval["low"] <= interval["value"] <= interval["high"]
    assert boot["auroc"]["high"] - boot["auroc"]["low"] < 0.15


def test_multilabel_and_multiclass_metrics():
    multilabel = Task("super", "multilabel", "super", ("A", "B", "C"))
    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=float)
    probability = np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.3], [0.6, 0.4, 0.2], [0.2, 0.1, 0.9]])
    got = compute_metrics(multilabel, truth, probability)
    # row 3 misses label B (0.4 < 0.5): subset accuracy 3/4, recall of B 1/2, every label perfectly ranked
    assert got["accuracy"] == pytest.approx(0.75) and got["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert got["auroc"] == pytest.approx(1.0) and got["precision"] == pytest.approx(1.0)
    multiclass = Task("rhythm", "multiclass", "rhythm", ("SR", "AF", "OTHER"))
    got = compute_metrics(multiclass, np.array([0, 1, 2, 1]), np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4], [0.2, 0.6, 0.2]]))
    assert got["accuracy"] == pytest.approx(0.75) and got["auroc"] == pytest.approx(1.0)
