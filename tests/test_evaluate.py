"""Runs are scored on held-out patches (val or the protocol's test rows), never on training
patches; which patches a run saw is decided by their pixels, not by their file names."""

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from pcamlib.cache import load_patches
from pcamlib.config import SAMPLE_DIR, TrainConfig
from pcamlib.evaluate import best_run, results_table, run_summary, scoring_rows, subset_rows
from pcamlib.stream import read_overlap, read_split
from pcamlib.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 1), ("b", 2)):
        tiny_run(root / name, seed=seed)
    return root


def test_val_rows_are_the_runs_own_held_out_ids(runs):
    cache = load_patches(SAMPLE_DIR, "train", progress=False)
    split = pd.read_csv(runs / "a" / "split.csv", dtype={"id": str})
    rows = subset_rows(cache, runs / "a", "val")
    assert sorted(np.asarray(cache.ids)[rows]) == sorted(split.id[split.subset == "val"])
    content_of = dict(zip(cache.ids, cache.content, strict=True))
    assert split.content.tolist() == [content_of[i] for i in split.id]  # train() records it
    other = subset_rows(cache, runs / "b", "val")
    assert set(rows) != set(other)  # different seeds, different held-out patches
    limited = subset_rows(cache, runs / "a", "val", limit=20)
    assert len(limited) == 20 and cache.labels[limited].sum() == 10
    with pytest.raises(FileNotFoundError, match="no split.csv"):
        subset_rows(cache, runs / "nowhere", "val")


def test_results_table_and_best_run(runs):
    cache = load_patches(SAMPLE_DIR, "train", progress=False)
    table, curves = results_table([runs / "a", runs / "b"], cache, limit=40)
    assert list(table.index) == ["a", "b"]
    assert {"auc_tta1", "auc_tta8", "accuracy", "ece", "params"} <= set(table.columns)
    assert table[["auc_tta1", "auc_tta8", "accuracy", "ece"]].stack().between(0, 1).all()
    assert table.n_test.tolist() == [40, 40]  # the protocol's test rows, not each run's val
    y, p = curves["a"]
    assert len(y) == len(p) == 40
    best = best_run(runs)
    assert run_summary(best)["best_val_auc"] == max(
        run_summary(runs / r)["best_val_auc"] for r in ("a", "b")
    )
    with pytest.raises(FileNotFoundError, match="no training runs"):
        best_run(runs / "a")


def test_batchnorm_gap_names_stale_moving_averages():
    """Moving averages far from the data's statistics: inference ties every patch (AUC 0.5)."""
    import keras

    from pcamlib.evaluate import batchnorm_gap

    cache = load_patches(SAMPLE_DIR, "train", progress=False)
    rows = np.random.default_rng(0).permutation(np.r_[0:60, 800:860])  # both classes, mixed
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dense(1, use_bias=False, name="green")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="out")(x))
    model.get_layer("green").set_weights([np.array([[0], [1], [0]], "float32")])
    model.get_layer("out").set_weights([np.ones((1, 1), "float32"), np.zeros(1, "float32")])
    model.get_layer("bn").moving_mean.assign(np.full(1, 1e4, "float32"))  # stale: sigmoid → 0
    gap = batchnorm_gap(model, cache, rows, batch_size=len(rows))  # one batch: one affine map
    assert gap["moving averages"] == 0.5  # every probability exactly 0: no ranking left
    # One batch normalised by its own statistics: an increasing map of each patch's mean green.
    from sklearn.metrics import roc_auc_score

    green = np.asarray(cache.images[rows])[..., 1].mean(axis=(1, 2))
    assert gap["batch statistics"] == pytest.approx(roc_auc_score(cache.labels[rows], green))


def _export(root, images, labels, names) -> None:
    """A PCam-style class-folder export: ``<label>/<name>.tif`` (lossless, unlike JPEG)."""
    for image, label, name in zip(images, labels, names, strict=True):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / str(label) / f"{name}.tif", image)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A run on export ``a`` (no test rows); ``b``: a's file names, other patches; ``c``: b
    plus 6 of the run's training and 2 of its validation patches under new names. Like two
    PCam exports, which all name their files ``patch0000000.jpg`` onwards."""
    root = tmp_path_factory.mktemp("exports")
    sample = load_patches(SAMPLE_DIR, "train", progress=False)
    by_class = [np.flatnonzero(sample.labels == c) for c in (0, 1)]
    names = [f"patch{k:07d}" for k in range(48)]
    for name, lo in (("a", 0), ("b", 100)):
        rows = np.concatenate([rows[lo : lo + 24] for rows in by_class])
        _export(root / name, sample.images[rows], sample.labels[rows], names)
    settings = dict(epochs=1, steps_per_epoch=1, batch_size=16, model_kwargs={"widths": [8, 16]})
    config = TrainConfig(
        model="pcamnet", data=str(root / "a"), out=str(root / "run"), test_fraction=0, **settings
    )
    train(config, verbose=0)
    split = read_split(root / "run")
    shutil.copytree(root / "b", root / "c")
    picked = [*split.id[split.subset == "train"][:6], *split.id[split.subset == "val"][:2]]
    for k, item_id in enumerate(picked):  # "0/patch0000003" → c/0/copy0.tif, same pixels
        label = item_id.split("/")[0]
        shutil.copy(root / "a" / f"{item_id}.tif", root / "c" / label / f"copy{k}.tif")
    return root


def test_another_export_with_the_same_file_names_is_data_the_run_never_saw(exports):
    other = load_patches(exports / "b", progress=False)
    split = read_split(exports / "run")
    assert set(other.ids) == set(split.id)  # every name collides, no pixels do
    rows, scored = scoring_rows(other, exports / "run")  # by id: "has no 'test' rows"
    assert len(rows) == 48 and scored["subset"] == "all" and scored["unseen_data"]
    rows, scored = scoring_rows(other, exports / "run", "all", include_train=True)
    assert len(rows) == 48 and scored["train_rows"] == 0  # by id: 36, every training name
    with pytest.raises(ValueError, match="12 of its 12 val patches are not in"):
        subset_rows(other, exports / "run", "val")


def test_the_same_pixels_under_other_names_were_seen(exports):
    mixed = load_patches(exports / "c", progress=False)
    n_seen = 6  # of the 8 copies, 6 were training patches, 2 validation
    with pytest.raises(ValueError, match="no 'test' rows"):  # the run's data: its test rows
        scoring_rows(mixed, exports / "run")
    with pytest.raises(ValueError, match=f"holds {n_seen} of the 36 rows .* matched by content"):
        scoring_rows(mixed, exports / "run", "all")
    rows, scored = scoring_rows(mixed, exports / "run", "all", include_train=True)
    assert len(rows) == 56 and scored["train_rows"] == n_seen and not scored["unseen_data"]
    with pytest.raises(ValueError, match="10 of its 12 val patches are not in"):
        subset_rows(mixed, exports / "run", "val")


def test_own_data_held_out_rows(exports, tmp_path):
    own = load_patches(exports / "a", progress=False)
    with pytest.raises(ValueError, match="no 'test' rows"):
        scoring_rows(own, exports / "run")
    rows, scored = scoring_rows(own, exports / "run", "val")
    assert len(rows) == 12 and scored["train_rows"] == 0
    old = tmp_path / "old-run"  # a split.csv without the pixel hashes train() records
    old.mkdir()
    read_split(exports / "run").drop(columns="content").to_csv(old / "split.csv", index=False)
    with pytest.raises(ValueError, match=r"old-run/split.csv: missing column\(s\) content"):
        scoring_rows(own, old, "all")


def test_split_and_overlap_files_are_checked(exports, tmp_path):
    split = read_split(exports / "run")
    split.loc[3, "content"] = "xyz"
    (tmp_path / "run").mkdir()
    split.to_csv(tmp_path / "run" / "split.csv", index=False)
    with pytest.raises(ValueError, match=r"split.csv: row 5 has content 'xyz'"):
        read_split(tmp_path / "run")
    overlap = tmp_path / "overlap.csv"
    rows = [["a1", "train", 1, "1/p.jpg", 1, 0.5], ["t1", "test", "", "0/q.jpg", 0, 1.0]]
    pd.DataFrame(rows, columns=["id", "split", "label", "match", "match_label", "distance"]).to_csv(
        overlap, index=False
    )
    assert read_overlap(overlap) == {"a1", "t1"} and read_overlap(overlap, "test") == {"t1"}
    pd.read_csv(overlap).drop(columns="match").to_csv(overlap, index=False)
    with pytest.raises(ValueError, match="overlap.csv: missing column.s. match"):
        read_overlap(overlap)
