"""`pcam evaluate` cannot silently mis-score: held-out test rows by default, training rows only
on request (and counted), data the run never saw scored whole; seen means the same pixels, not
the same file name. Only the CLI is imported, so these tests hold whatever modules sit behind
it."""

import json
import shutil

import pandas as pd
import pytest
import tifffile

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


def _renamed_sample_patches(root):
    """40 of the sample's patches (20 per class), their pixels unchanged, under new ids."""
    (root / "train").mkdir(parents=True)
    labels = pd.read_csv(SAMPLE_DIR / "train_labels.csv").groupby("label").head(20)
    for i in labels.id:
        shutil.copy(SAMPLE_DIR / "train" / f"{i}.tif", root / "train" / f"new{i}.tif")
    labels.assign(id="new" + labels.id).to_csv(root / "train_labels.csv", index=False)
    load_patches(root, "train", progress=False)  # pack first: packing reports on stdout
    return labels


def test_the_same_pixels_under_other_names_were_seen(run_dir, tmp_path, capsys):
    labels = _renamed_sample_patches(tmp_path / "renamed")
    split = pd.read_csv(run_dir / "split.csv", dtype={"id": str})
    n_seen = int(split.id[split.subset == "train"].isin(labels.id).sum())
    model = ["--model", str(run_dir), "--data", str(tmp_path / "renamed")]
    code, err = _evaluate(capsys, *model)  # the run's patches, but not its test rows
    assert code == 2 and "test patches are not in" in err
    code, err = _evaluate(capsys, *model, "--subset", "all")
    assert code == 2 and f"holds {n_seen} of the" in err and "--include-train" in err
    code, metrics = _evaluate(capsys, *model, "--subset", "all", "--include-train")
    assert code == 0 and metrics["n"] == 40 and 0 < metrics["train_rows"] == n_seen


def _export(root, picks, names) -> None:
    """Sample patches (rows ``picks``) as a PCam-style class-folder export under ``names``."""
    cache = load_patches(SAMPLE_DIR, "train", progress=False)
    for k, name in zip(picks, names, strict=True):
        folder = root / str(cache.labels[k])
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / f"{name}.tif", cache.images[k])


def test_another_export_with_the_same_file_names_is_scored_whole(tmp_path, capsys):
    """Two PCam exports both name files patch0000000… onwards; a run saw only one of them."""
    labels = pd.read_csv(SAMPLE_DIR / "train_labels.csv").label
    zeros, ones = labels.index[labels == 0], labels.index[labels == 1]
    names = [f"patch{k:07d}" for k in range(64)]
    _export(tmp_path / "mine", [*zeros[:32], *ones[:32]], names)
    _export(tmp_path / "other", [*zeros[200:232], *ones[200:232]], names)  # same names
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "mine"), "--model", "cnn1", "--out", str(run)]
    args += ["--test-fraction", "0", "--epochs", "1", "--steps-per-epoch", "1"]
    assert main([*args, "--batch-size", "16"]) == 0
    load_patches(tmp_path / "other", "train", progress=False)
    model = ["--model", str(run), "--data", str(tmp_path / "other")]
    code, metrics = _evaluate(capsys, *model)  # by name: "split.csv has no 'test' rows"
    assert code == 0 and metrics["n"] == 64 and metrics["subset"] == "all"
    assert metrics["train_rows"] == 0 and metrics["unseen_data"] is True
    code, metrics = _evaluate(capsys, *model, "--subset", "all", "--include-train")
    assert code == 0 and metrics["train_rows"] == 0  # by name: all 48 training names
    code, err = _evaluate(capsys, *model, "--subset", "val")
    assert code == 2 and "16 of its 16 val patches are not in" in err
