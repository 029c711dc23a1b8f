"""Runs are scored on held-out ids (val or the protocol's test rows), never on training ids."""

import numpy as np
import pandas as pd
import pytest

from pcamlib.cache import load_patches
from pcamlib.config import SAMPLE_DIR, TrainConfig
from pcamlib.evaluate import best_run, results_table, run_summary, subset_rows
from pcamlib.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 1), ("b", 2)):
        train(
            TrainConfig(
                model="pcamnet",
                data=str(SAMPLE_DIR),
                out=str(root / name),
                epochs=1,
                steps_per_epoch=2,
                batch_size=32,
                seed=seed,
                model_kwargs={"widths": [8, 16]},
            ),
            verbose=0,
        )
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
