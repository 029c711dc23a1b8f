"""No leaked Kaggle score: runs that saw PCam valid/test data, or descend from one, are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcamlib.config import TrainConfig
from pcamlib.submission import (
    PRETRAINED_SOURCE,
    RUN_NOTE,
    SubmissionError,
    check_no_leak,
    submission_run,
    training_sources,
    write_submission,
)

IDS = [f"{i:040x}" for i in range(12)]
PROBS = np.linspace(0.05, 0.95, 12)
LEAK = "Kaggle's test set is drawn from PCam's valid and test splits"


def make_run(folder: Path, data: str, init: str | None = None, ids: list[str] | None = None):
    """A run directory as train() leaves it, as far as provenance goes: config.json, split.csv."""
    folder.mkdir(parents=True)
    config = json.loads(TrainConfig(model="cnn1", data=data, out=str(folder)).to_json())
    (folder / "config.json").write_text(json.dumps({**config, "init": init}))
    ids = ids or ["a", "b", "c"]
    subsets = (["train", "val", "test"] * len(ids))[: len(ids)]
    split = pd.DataFrame({"id": ids, "label": 0, "subset": subsets, "split": "stratified"})
    split.to_csv(folder / "split.csv", index=False)
    (folder / "best.keras").write_bytes(b"")
    return folder


def packed_cache(folder: Path, source: str) -> Path:
    """A cache directory as pack() records its source (only meta.json matters here)."""
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"source": source, "count": 4}))
    return folder


@pytest.mark.parametrize(
    "data",
    [
        "data/sample",  # Kaggle layout
        "/data/camelyonpatch_level_2_split_train_x.h5",
    ],
)
def test_runs_on_kaggle_data_or_pcam_train_pass(tmp_path, data):
    run = make_run(tmp_path / "run", data)
    assert [s.data for s in check_no_leak(run)] == [data]


def test_the_pcam_hdf5_layout_trains_on_its_train_split_and_passes(tmp_path):
    root = tmp_path / "pcam"
    root.mkdir()
    for split in ("train", "valid", "test"):  # all three sit there; train() reads train
        (root / f"camelyonpatch_level_2_split_{split}_x.h5").write_bytes(b"")
    run = make_run(tmp_path / "run", str(root), ids=["train/0", "train/1", "train/2"])
    assert check_no_leak(run)[0].pcam_splits == {"train"}


@pytest.mark.parametrize(
    ("data", "split"),
    [
        ("/data/camelyonpatch_level_2_split_valid_x.h5", "valid"),
        ("/data/camelyonpatch_level_2_split_test_x.h5", "test"),
    ],
)
def test_a_run_on_pcam_valid_or_test_data_is_refused_saying_why(tmp_path, data, split):
    run = make_run(tmp_path / "run", data)
    with pytest.raises(SubmissionError, match=rf"trained on PCam's {split} split .*{LEAK}"):
        check_no_leak(run)


def test_a_cache_packed_from_pcam_valid_is_recognised_by_its_recorded_source(tmp_path):
    cache = packed_cache(tmp_path / "cache", "pcam-h5:/x/camelyonpatch_level_2_split_valid_x.h5")
    run = make_run(tmp_path / "run", str(cache))
    with pytest.raises(SubmissionError, match="trained on PCam's valid split"):
        check_no_leak(run)


def test_pcam_ids_in_split_csv_give_it_away_whatever_the_path(tmp_path):
    """Data moved or renamed: the ids pcam_h5 (valid/7) or TFDS (test_7) gave still tell."""
    for ids in (["valid/0", "valid/1", "valid/2"], ["1/test_5", "0/test_9", "0/test_2"]):
        run = make_run(tmp_path / ids[0].replace("/", "-"), "/gone/folder", ids=ids)
        with pytest.raises(SubmissionError, match="trained on PCam's (valid|test) split"):
            check_no_leak(run)


def test_the_init_chain_is_followed_to_its_end(tmp_path):
    leaky = make_run(tmp_path / "leaky", "/data/camelyonpatch_level_2_split_test_x.h5")
    middle = make_run(tmp_path / "middle", "data/sample", init=str(leaky / "best.keras"))
    tuned = make_run(tmp_path / "tuned", "data/sample", init=str(middle))
    assert [Path(s.model).name for s in training_sources(tuned)] == ["tuned", "middle", "leaky"]
    with pytest.raises(SubmissionError, match=rf"fine-tuned from {leaky}, trained on PCam's test"):
        check_no_leak(tuned)
    clean = make_run(tmp_path / "clean", "data/sample", init="pretrained")
    assert check_no_leak(clean)[-1] == PRETRAINED_SOURCE  # PCam train only: allowed


@pytest.mark.parametrize("kind", ["bare file", "missing", "loop"])
def test_an_init_whose_data_is_unknown_is_refused(tmp_path, kind):
    if kind == "bare file":
        init = tmp_path / "downloads" / "model.keras"
        init.parent.mkdir()
        init.write_bytes(b"")
        match = "has no config.json beside it, so what it was trained on cannot be checked"
    elif kind == "missing":
        init, match = tmp_path / "deleted-run", "does not exist"
    else:
        init, match = tmp_path / "run", "init chain loops back to itself"
    run = make_run(tmp_path / "run", "data/sample", init=str(init))
    with pytest.raises(SubmissionError, match=match):
        check_no_leak(run)


def test_write_submission_checks_the_run_and_records_it_beside_the_file(tmp_path):
    leaky = make_run(tmp_path / "leaky", "/data/camelyonpatch_level_2_split_valid_x.h5")
    path = tmp_path / "out" / "submission.csv"
    with pytest.raises(SubmissionError, match=LEAK):
        write_submission(IDS, PROBS, path, run=leaky)
    assert not path.parent.exists() or not any(path.parent.iterdir())  # nothing written
    clean = make_run(tmp_path / "clean", "data/sample")
    write_submission(IDS, PROBS, path, run=clean / "best.keras")
    assert submission_run(path) == clean.resolve()
    write_submission(IDS, PROBS, path)  # another writer: the note must not name the old run
    assert not path.with_name(path.name + RUN_NOTE).exists() and submission_run(path) is None
    inside = write_submission(IDS, PROBS, clean / "submission.csv")
    assert submission_run(inside) == clean  # a file in a run directory belongs to that run
