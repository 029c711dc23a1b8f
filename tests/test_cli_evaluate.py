"""`pcam evaluate` cannot silently mis-score: held-out test rows by default, training rows only
on request (and counted), data the run never saw scored whole. Only the CLI is imported, so
these tests run (and fail) against the code from before the protocol too."""

import json
import shutil

import pandas as pd
import pytest

from pcamlib.cache import load_patches
from pcamlib.cli import main
from pcamlib.config import SAMPLE_DIR


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "cnn1"
    args = ["train", "--data", str(SAMPLE_DIR), "--model", "cnn1", "--out", str(out)]
    assert main([*args, "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "32"]) == 0
    return out


def _evaluate(capsys, *args) -> tuple[int, dict | str]:
    capsys.readouterr()
    code = main(["evaluate", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err)


def test_default_scores_the_runs_held_out_test_rows(run_dir, capsys):
    split = pd.read_csv(run_dir / "split.csv", dtype={"id": str})
    code, metrics = _evaluate(capsys, "--model", str(run_dir), "--data", str(SAMPLE_DIR))
    assert code == 0
    n_test = int((split.subset == "test").sum())
    assert n_test > 0 and metrics["n"] == n_test and metrics["n_pos"] == n_test // 2
    assert metrics["subset"] == "test" and metrics["train_rows"] == 0
    assert metrics["roc_auc_lo"] <= metrics["roc_auc"] <= metrics["roc_auc_hi"]


def test_rows_with_training_ids_need_an_explicit_flag(run_dir, capsys):
    model = ["--model", str(run_dir), "--data", str(SAMPLE_DIR)]
    for subset in ("all", "train"):
        code, err = _evaluate(capsys, *model, "--subset", subset)
        assert code == 2 and "--include-train" in err and "trained on" in err
    n_train = int((pd.read_csv(run_dir / "split.csv").subset == "train").sum())
    code, metrics = _evaluate(capsys, *model, "--subset", "all", "--include-train")
    assert code == 0 and metrics["n"] == 1600 and metrics["train_rows"] == n_train


def test_data_the_run_never_saw_is_scored_whole(run_dir, tmp_path, capsys):
    other = tmp_path / "other"  # 40 of the sample's patches under ids the run never saw
    (other / "train").mkdir(parents=True)
    labels = pd.read_csv(SAMPLE_DIR / "train_labels.csv").groupby("label").head(20)
    for i in labels.id:
        shutil.copy(SAMPLE_DIR / "train" / f"{i}.tif", other / "train" / f"new{i}.tif")
    labels.assign(id="new" + labels.id).to_csv(other / "train_labels.csv", index=False)
    load_patches(other, "train", progress=False)  # pack first: packing reports on stdout
    code, metrics = _evaluate(capsys, "--model", str(run_dir), "--data", str(other))
    assert code == 0 and metrics["n"] == 40
    assert metrics["subset"] == "all" and metrics["train_rows"] == 0
    code, err = _evaluate(capsys, "--model", str(run_dir), "--data", str(other), "--subset", "test")
    assert code == 2 and "test id(s) are not in" in err
