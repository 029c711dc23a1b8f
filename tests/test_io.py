"""Atomic writes and bad-item listings (pcamlib.cache), the input checks (sources, metrics)."""

import os
import stat

import numpy as np
import pytest

from pcamlib.cache import _bad_items_error, atomic_path, atomic_write_text
from pcamlib.metrics import first_bad, labels01
from pcamlib.sources import Problem, few, not01


def test_atomic_write_replaces_whole_file_readable_by_others(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["meta.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "last.keras"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp.keras")  # suffix kept
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["last.keras"]


def test_missing_folder_fails_before_writing(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "x.txt", "x")


def test_few_names_the_first_offenders_and_counts_the_rest():
    assert few(["a", "b"]) == "'a', 'b'"
    assert few(list("abcdefg")) == "'a', 'b', 'c', 'd', 'e' (+2 more)"
    assert few([1, 2, 3], 1, fmt=str, sep="\n  ") == "1\n  (+2 more)"


def test_first_bad_rows_and_plain_values():
    values = np.array([0, 7, 1, -1])
    assert first_bad(not01(values), values, "bad labels") == "2 bad labels: row 1: 7, row 3: -1"


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([0, 1, 2], "bad labels: row 2: 2$"),
        ([0.0, 0.5], "row 1: 0.5"),
        ([0, float("nan")], "row 1: nan"),
        (["0", "1"], "numeric"),
        ([], "y is empty"),
        (np.zeros((2, 2)), r"1-D \(N,\) or \(N, 1\); got shape \(2, 2\)"),
    ],
)
def test_labels01_refuses_anything_but_0_1(values, match):
    with pytest.raises(ValueError, match=match):
        labels01(values, "y")


def test_labels01_accepts_bools_floats_and_columns():
    assert labels01(np.array([[True], [False]])).tolist() == [1, 0]
    assert labels01([1.0, 0.0]).dtype == np.int64


def test_bad_items_are_listed_the_first_50_then_counted():
    problems = [Problem(f"id{i}", f"f{i}.tif", "corrupt") for i in range(52)]
    err = _bad_items_error(problems, "data")
    lines = str(err).splitlines()
    assert lines[:3] == [
        "data: 52 bad item(s) (all in DataError.problems)",
        "  id0 (f0.tif): corrupt",
        "  id1 (f1.tif): corrupt",
    ]
    assert lines[50:] == [
        "  id49 (f49.tif): corrupt",
        "  (+2 more)",
        "(pass on_error='exclude' to leave them out (listed in excluded.csv))",
    ]
    assert err.problems == problems
    one = str(_bad_items_error(problems[:1], "data")).splitlines()
    assert one[:2] == ["data: 1 bad item(s)", "  id0 (f0.tif): corrupt"]
