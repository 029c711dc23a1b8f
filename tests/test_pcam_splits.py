"""PCam's HDF5 layout: train on its train split, choose on valid, report on test (split="pcam")."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from test_download_pcam import h5_bytes

from pcamlib.cache import load_patches
from pcamlib.cli import main
from pcamlib.config import SAMPLE_DIR, SettingError, TrainConfig, default_data_dir
from pcamlib.evaluate import results_table, scoring_rows, subset_rows
from pcamlib.notebook import data_kind
from pcamlib.pcam import H5_PATTERN
from pcamlib.sources import open_source, read_image
from pcamlib.stream import run_split
from pcamlib.submission import SubmissionError, check_no_leak
from pcamlib.train import train

SIZES = {"train": 24, "valid": 8, "test": 8}
TINY = dict(model="pcamnet", model_kwargs={"widths": [8, 16]}, epochs=1, steps_per_epoch=2)


def write_pcam(root, sizes=SIZES, meta: bool = True) -> dict[str, np.ndarray]:
    """PCam's six HDF5 files (+ meta csvs) in the real format, from the sample's patches: x
    (N, 96, 96, 3) uint8, y (N, 1, 1, 1) uint8; valid's x is gzip-compressed inside the file."""
    labels = pd.read_csv(SAMPLE_DIR / "train_labels.csv", dtype=str)
    by_class = [labels.loc[labels["label"] == c, "id"].tolist() for c in ("0", "1")]
    root.mkdir(parents=True, exist_ok=True)
    images, start = {}, 0
    for split, n in sizes.items():
        ids = [by_class[i % 2][start + i // 2] for i in range(n)]  # both classes, alternating
        start += n // 2
        x = np.stack([read_image(SAMPLE_DIR / "train" / f"{i}.tif") for i in ids])
        y = (np.arange(n) % 2).astype(np.uint8).reshape(-1, 1, 1, 1)
        x_path = root / H5_PATTERN.format(split=split, xy="x")
        if split == "valid":
            with h5py.File(x_path, "w") as f:
                f.create_dataset("x", data=x, chunks=(1, 96, 96, 3), compression="gzip")
        else:
            x_path.write_bytes(h5_bytes("x", x))
        (root / H5_PATTERN.format(split=split, xy="y")).write_bytes(h5_bytes("y", y))
        if meta:
            wsi = [f"{split}_slide_{i % 4}" for i in range(n)]
            csv = root / f"camelyonpatch_level_2_split_{split}_meta.csv"
            pd.DataFrame({"tumor_patch": y.ravel() == 1, "wsi": wsi}).to_csv(csv)
        images[split] = x
    return images


@pytest.fixture(scope="module")
def pcam(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "pcam"
    return root, write_pcam(root)


@pytest.fixture(scope="module")
def run(pcam, tmp_path_factory):
    root, _ = pcam
    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = TrainConfig(**TINY, batch_size=8, data=str(root), out=str(out))
    assert config.split == "pcam"  # not given: the default on this layout
    train(config, verbose=0)
    return out


def test_train_on_the_layout_reads_all_three_splits_valid_and_test_alone(pcam, tmp_path):
    root, images = pcam
    source = open_source(root, "train")
    assert source.block_reads and len(source.parts) == 3
    assert len(source) == sum(SIZES.values())
    assert source.ids[:2] == ["train/0", "train/1"] and source.ids[24:26] == ["valid/0", "valid/1"]
    assert source.ids[-1] == "test/7" and source.labels.tolist()[:4] == [0, 1, 0, 1]
    assert source.groups[24] == "valid_slide_0"  # from the meta csvs
    whole = np.concatenate([images[s] for s in SIZES])
    np.testing.assert_array_equal(source.read_many(20, 36), whole[20:36])  # across two files
    assert source.where(25) == f"{root / H5_PATTERN.format(split='valid', xy='x')}[1]"
    valid = open_source(root, "valid")
    assert valid.block_reads and valid.ids == [f"valid/{i}" for i in range(8)]
    cache = load_patches(root, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(cache.images, whole)
    assert cache.meta["source"] == f"pcam-splits:{root.resolve()}"


def test_split_pcam_is_the_default_there_and_the_fractions_are_refused(pcam, tmp_path):
    root, _ = pcam
    assert TrainConfig(data=str(root)).split == "pcam"
    assert TrainConfig(data=str(root), split="slide").split == "slide"
    assert TrainConfig(data=str(SAMPLE_DIR)).split == "stratified"
    recipe = TrainConfig.from_recipe("pcam-cpu", data=str(root))  # its val_fraction is not used
    assert (recipe.split, recipe.val_fraction) == ("pcam", 0.25)
    assert TrainConfig.from_json(recipe.to_json()) == recipe
    with pytest.raises(SettingError, match=r"^val_fraction=0.1: not used with split pcam \(the"):
        TrainConfig(data=str(root), val_fraction=0.1)
    out = tmp_path / "run"
    argv = ["train", "--data", str(root), "--out", str(out), "--split", "pcam"]
    assert main([*argv, "--test-fraction", "0"]) == 2
    assert not out.exists()
    with pytest.raises(SettingError, match=r"^split='pcam': needs PCam's train, valid and test"):
        train(TrainConfig(**TINY, data=str(SAMPLE_DIR), split="pcam", out=str(out)))
    assert not out.exists()
    valid = load_patches(root, "valid", cache_dir=tmp_path / "valid", progress=False)
    with pytest.raises(SettingError, match=rf"{tmp_path / 'valid'} holds only PCam's valid split$"):
        run_split(TrainConfig(data=str(root), out=str(out), batch_size=4), valid, replicas=1)


def test_cli_refusal_is_one_line_naming_the_flag(pcam, tmp_path, capsys):
    root, _ = pcam
    argv = ["train", "--data", str(root), "--out", str(tmp_path / "r"), "--val-fraction", "0.1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--val-fraction 0.1: not used with split pcam" in err


def test_stratified_and_slide_runs_carve_their_parts_out_of_pcam_train(pcam, tmp_path):
    root, _ = pcam
    cache = load_patches(root, cache_dir=tmp_path / "cache", progress=False)
    for split in ("stratified", "slide"):
        fractions = dict(val_fraction=0.5, test_fraction=0.25, batch_size=4)
        config = TrainConfig(data=str(root), split=split, out=str(tmp_path / split), **fractions)
        parts = run_split(config, cache, replicas=1)[:3]
        rows = np.concatenate(parts)
        assert all(cache.ids[i].startswith("train/") for i in rows) and len(rows) == 24


def test_a_pcam_run_trains_on_train_chooses_on_valid_and_reports_on_test(pcam, run, capsys):
    root, _ = pcam
    split = pd.read_csv(run / "split.csv", dtype=str)
    assert list(split.columns) == ["id", "label", "subset", "split", "protocol", "content"]
    part = split["id"].str.split("/").str[0]
    assert part.map({"train": "train", "valid": "val", "test": "test"}).equals(split["subset"])
    assert split["subset"].value_counts().to_dict() == {"train": 24, "val": 8, "test": 8}
    assert set(split["split"]) == {"pcam"} and split["protocol"].equals(split["subset"])
    assert json.loads((run / "config.json").read_text())["split"] == "pcam"

    cache = load_patches(root, progress=False)  # what train() packed, all three splits
    rows, info = scoring_rows(cache, run)
    assert info["subset"] == "test" and info["train_rows"] == 0
    assert [cache.ids[i] for i in rows] == [f"test/{i}" for i in range(8)]
    assert [cache.ids[i] for i in subset_rows(cache, run, "val")][0] == "valid/0"
    table, _ = results_table([run], cache)
    assert table.loc["tiny", "n_test"] == 8

    assert main(["evaluate", "--model", str(run), "--data", str(root)]) == 0  # PCam test
    scored = json.loads(capsys.readouterr().out)
    assert (scored["subset"], scored["n"], scored["train_rows"]) == ("test", 8, 0)


def test_a_pcam_run_saw_pcam_valid_so_kaggle_refuses_it(run):
    with pytest.raises(SubmissionError, match=r"refused: it was trained on PCam's test and valid"):
        check_no_leak(run)


def test_the_notebooks_pick_data_pcam_once_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("PCAM_SMOKE", "0")
    monkeypatch.setenv("PCAM_HOME", str(tmp_path))
    monkeypatch.delenv("PCAM_DATA", raising=False)
    pcam = tmp_path / "data" / "pcam"
    write_pcam(pcam, {"train": 2, "valid": 2, "test": 2}, meta=False)
    (pcam / H5_PATTERN.format(split="test", xy="y")).rename(tmp_path / "y.h5")
    assert default_data_dir() == tmp_path / "data" / "sample"  # incomplete: not yet
    (tmp_path / "y.h5").rename(pcam / H5_PATTERN.format(split="test", xy="y"))
    assert default_data_dir() == pcam and data_kind(pcam) == "pcam"
    (tmp_path / "data" / "full").mkdir()
    (tmp_path / "data" / "full" / "train_labels.csv").write_text("id,label\n")
    assert default_data_dir() == tmp_path / "data" / "full"  # the competition comes first


def test_the_cli_packs_trains_and_evaluates_on_the_layout(pcam, tmp_path, capsys):
    root, _ = pcam
    cache = tmp_path / "cache"
    assert main(["pack", str(root), "--out", str(cache)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["count"] == sum(SIZES.values())
    run = tmp_path / "run"
    tiny = ["--model", "cnn1", "--image-size", "32", "--epochs", "1", "--steps-per-epoch", "2"]
    assert main(["train", "--data", str(cache), "--out", str(run), *tiny, "--batch-size", "8"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["epochs"] == 1
    assert set(pd.read_csv(run / "split.csv")["split"]) == {"pcam"}  # the cache's default
    for data in (root, cache):  # the HDF5 folder or the cache: PCam's test split
        assert main(["evaluate", "--model", str(run), "--data", str(data)]) == 0
        scored = json.loads(capsys.readouterr().out)
        assert (scored["subset"], scored["n"], scored["train_rows"]) == ("test", 8, 0)
    out = tmp_path / "submission.csv"
    assert main(["predict", "--model", str(run), "--data", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err  # refused before predicting: it chose on PCam valid
    assert len(err.splitlines()) == 1 and "refused" in err and not out.exists()


def test_the_pretrained_model_is_scored_on_pcam_valid_and_test_without_a_warning(
    pcam, tmp_path, capsys
):
    import warnings

    from pcamlib.pretrained import best_or_pretrained
    from pcamlib.submission import expected_test_ids, kaggle_test_ids

    root, _ = pcam
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its overlap with PCam valid/test is known: none
        best = best_or_pretrained(tmp_path / "runs", root)
    assert best == tmp_path / "runs" / "pretrained"
    split = pd.read_csv(best / "split.csv", dtype=str)
    part = split["id"].str.split("/").str[0]
    assert part.map({"valid": "val", "test": "test"}).equals(split["subset"])
    assert len(split) == SIZES["valid"] + SIZES["test"]

    assert kaggle_test_ids(root) is None  # PCam's test split is never a Kaggle test set
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith(f"{root}: no submission.csv written")
    sample = expected_test_ids(SAMPLE_DIR / "sample_submission.csv")
    assert kaggle_test_ids(SAMPLE_DIR) == sample
