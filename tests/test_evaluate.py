"""Runs are scored on held-out ids (val or the protocol's test rows), never on training ids."""

import numpy as np
import pandas as pd
import pytest

from pcamlib.cache import load_patches
from pcamlib.config import SAMPLE_DIR
from pcamlib.evaluate import best_run, results_table, run_summary, subset_rows


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
    other = subset_rows(cache, runs / "b", "val")
    assert set(rows) != set(other)  # different seeds, different held-out patches
    limited = subset_rows(cache, runs / "a", "val", limit=20)
    assert len(limited) == 20 and cache.labels[limited].sum() == 10
    with pytest.raises(ValueError, match="split.csv"):
        subset_rows(cache, None, "val")


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
