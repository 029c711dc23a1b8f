"""Tests for pcamlib.submission: atomic writing, ordering and every refusal of a bad submission."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcamlib.sources import DataError
from pcamlib.submission import (
    SubmissionError,
    check_submission,
    expected_test_ids,
    is_kaggle_test,
    write_submission,
)

IDS = [f"{i:040x}" for i in range(12)]
PROBS = np.linspace(0.05, 0.95, 12).astype(np.float32)
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def _csv(tmp_path, text, name="sub.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_write_roundtrip_keeps_probabilities_and_expected_order(tmp_path):
    order = IDS[::-1]
    out = write_submission(IDS, PROBS, tmp_path / "sub" / "submission.csv", expected_ids=order)
    assert out == tmp_path / "sub" / "submission.csv"
    text = out.read_text().splitlines()
    assert text[0] == "id,label"
    back = pd.read_csv(out, dtype={"id": str})
    assert back["id"].tolist() == order
    expect = dict(zip(IDS, PROBS.astype(np.float64), strict=True))
    np.testing.assert_array_equal(back["label"].to_numpy(), [expect[i] for i in order])
    assert not back["label"].isin([0, 1]).all()
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temp file left


def test_write_without_expected_keeps_given_order(tmp_path):
    out = write_submission(IDS, PROBS[:, None], tmp_path / "s.csv")
    assert pd.read_csv(out, dtype={"id": str})["id"].tolist() == IDS


def test_failed_write_leaves_existing_file_untouched(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("previous\n")
    with pytest.raises(SubmissionError, match="missing id"):
        write_submission(IDS[:-1], PROBS[:-1], path, expected_ids=IDS)
    with pytest.raises(SubmissionError, match="exactly 0 or 1"):
        write_submission(IDS, (PROBS > 0.5).astype(int), path)
    with pytest.raises(SubmissionError, match="12 ids but 3"):
        write_submission(IDS, PROBS[:3], path)
    assert path.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_check_returns_validated_frame(tmp_path):
    path = write_submission(IDS, PROBS, tmp_path / "s.csv")
    frame = check_submission(path, IDS)
    assert list(frame.columns) == ["id", "label"]
    assert frame["label"].dtype == np.float64 and len(frame) == 12
    same = check_submission(pd.DataFrame({"id": IDS, "label": PROBS}), set(IDS))
    pd.testing.assert_frame_equal(frame, same, check_exact=False)


def test_missing_extra_duplicate_ids_are_named(tmp_path):
    rows = [*zip(IDS[2:], PROBS[2:], strict=True), ("intruder", 0.5), (IDS[3], 0.4)]
    path = _csv(tmp_path, "id,label\n" + "".join(f"{i},{p}\n" for i, p in rows))
    with pytest.raises(SubmissionError) as err:
        check_submission(path, IDS)
    msg = str(err.value)
    assert "2 missing id(s) of 12" in msg and repr(IDS[0]) in msg and repr(IDS[1]) in msg
    assert "1 unexpected id(s)" in msg and "'intruder'" in msg
    assert "1 duplicate id(s)" in msg and repr(IDS[3]) in msg


def test_many_missing_ids_are_summarised():
    frame = pd.DataFrame({"id": IDS[:2], "label": [0.2, 0.7]})
    with pytest.raises(SubmissionError, match=r"10 missing id\(s\) of 12: .*\(\+5 more\)"):
        check_submission(frame, IDS)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("a,0.5\nb,0.7\n", r"missing column\(s\) \['id', 'label'\].*header row"),
        ("id,prob\na,0.5\nb,0.2\n", r"missing column\(s\) \['label'\]"),
        ("id,label,extra\na,0.5,1\nb,0.2,1\n", "unexpected column"),
        ("label,id\n0.5,a\n0.2,b\n", "wrong order"),
        ("", "empty"),
        ("id,label\na,0.5\nb,\nc,0.1\n", r"NaN/empty label\(s\) for id\(s\) 'b'"),
        ("id,label\na,0.5\nb,nan\nc,0.1\n", r"NaN/empty label\(s\) for id\(s\) 'b'"),
        ("id,label\na,0.5\nb,inf\nc,0.1\n", r"infinite label\(s\) for id\(s\) 'b'"),
        ("id,label\na,0.5\nb,1.5\nc,-0.1\n", r"2 label\(s\) outside \[0, 1\]: 'b': 1.5, 'c': -0.1"),
        ("id,label\na,0.5\nb,high\nc,0.1\n", r"non-numeric label\(s\): 'b': 'high'"),
        ("id,label\na,1\nb,0\nc,1.0\n", "ROC AUC.*ranking"),
        ("id,label\na,0.5\nb,0.5\n", "constant|all 2 labels equal"),
        ("id,label\n", "no rows"),
    ],
)
def test_check_refuses_bad_files(tmp_path, body, match):
    with pytest.raises(SubmissionError, match=match):
        check_submission(_csv(tmp_path, body), None)


def test_submission_error_is_value_error():
    assert issubclass(SubmissionError, ValueError)


def test_expected_ids_from_csv_and_directory(tmp_path):
    sample = _csv(tmp_path, "id,label\n" + "".join(f"{i},0\n" for i in IDS[::-1]), "sample.csv")
    assert expected_test_ids(sample) == IDS[::-1]  # file order
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    for i in IDS[::-1]:
        (test_dir / f"{i}.tif").write_bytes(b"")
    (test_dir / "notes.txt").write_text("ignored")
    assert expected_test_ids(test_dir) == IDS  # sorted
    (tmp_path / "empty").mkdir()
    with pytest.raises(SubmissionError, match="no .tif"):
        expected_test_ids(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        expected_test_ids(tmp_path / "nope.csv")
    with pytest.raises(SubmissionError, match="more than once"):
        expected_test_ids(_csv(tmp_path, "id,label\na,0\na,0\n", "dup.csv"))
    with pytest.raises(DataError, match=r"noid.csv: missing column\(s\) \['id'\]"):
        expected_test_ids(_csv(tmp_path, "name,label\na,0\n", "noid.csv"))


def test_which_paths_hold_a_kaggle_test_set(tmp_path):
    (bare := tmp_path / "bare").mkdir()
    for name in ("a.tif", "a.tiff", "b.tif"):  # a: two files, still one test id
        (bare / name).write_bytes(b"")
    assert is_kaggle_test(bare) and expected_test_ids(bare) == ["a", "b"]
    (pcam := tmp_path / "pcam").mkdir()
    (pcam / "camelyonpatch_level_2_split_test_x.h5").write_bytes(b"")
    (tmp_path / "folders" / "test" / "0").mkdir(parents=True)
    assert not is_kaggle_test(pcam) and not is_kaggle_test(tmp_path / "folders")
    (root := tmp_path / "root").mkdir()  # a sample csv alone is enough
    (root / "sample_submission.csv").write_text("id,label\nb,0\n")
    assert is_kaggle_test(root) and is_kaggle_test(root / "sample_submission.csv")
    assert not is_kaggle_test(tmp_path / "nope.csv")


@pytest.mark.skipif(not (SAMPLE / "sample_submission.csv").exists(), reason="no data/sample")
def test_sample_data_ids_agree(tmp_path):
    from_csv = expected_test_ids(SAMPLE / "sample_submission.csv")
    from_dir = expected_test_ids(SAMPLE / "test")
    assert sorted(from_csv) == from_dir
    # The template itself is all zeros and must be refused as a submission.
    with pytest.raises(SubmissionError, match="exactly 0 or 1"):
        check_submission(SAMPLE / "sample_submission.csv", from_dir)
    probs = np.random.default_rng(0).random(len(from_dir))
    out = write_submission(from_dir, probs, tmp_path / "s.csv", expected_ids=from_csv)
    assert check_submission(out, from_dir)["id"].tolist() == from_csv


@pytest.mark.skipif(not (SAMPLE / "sample_submission.csv").exists(), reason="no data/sample")
def test_expected_ids_from_a_dataset_root(tmp_path):
    assert expected_test_ids(SAMPLE) == expected_test_ids(SAMPLE / "sample_submission.csv")
    root = tmp_path / "root"
    (root / "test").mkdir(parents=True)
    for i in IDS[::-1]:
        (root / "test" / f"{i}.tif").write_bytes(b"")
    assert expected_test_ids(root) == IDS  # no sample_submission.csv: the test/ listing
