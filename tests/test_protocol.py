"""The evaluation protocol: train / val / test parts, the same test rows for every run, and the
leaderboard that reports every run on them (pcamlib.stream, pcamlib.evaluate)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pcamlib.cache import load_patches
from pcamlib.config import SAMPLE_DIR, SettingError, TrainConfig
from pcamlib.evaluate import (
    _training_facts,
    best_run,
    predict_cache,
    results_table,
    run_summary,
    scoring_rows,
    subset_rows,
)
from pcamlib.metrics import youden_threshold
from pcamlib.stream import protocol_split, read_split
from pcamlib.train import load_model


@pytest.fixture(scope="module")
def cache():
    return load_patches(SAMPLE_DIR, "train", progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    """Two runs that differ in seed and val_fraction: their test rows must not."""
    root = tmp_path_factory.mktemp("runs")
    for name, seed, val_fraction in (("a", 1, 0.25), ("b", 2, 0.1)):
        tiny_run(root / name, seed=seed, val_fraction=val_fraction)
    return root


# --------------------------------------------------------------------------- protocol_split


def test_test_rows_depend_on_the_data_not_on_the_run(cache):
    labels = cache.labels
    parts = {
        (seed, vf): protocol_split(labels, seed=seed, val_fraction=vf)
        for seed in (1, 2)
        for vf in (0.25, 0.05)
    }
    tests = [test for _, _, test in parts.values()]
    assert all(np.array_equal(tests[0], t) for t in tests)
    assert len(tests[0]) == 320 and labels[tests[0]].sum() == 160  # 20%, stratified
    for (_, vf), (tr, va, te) in parts.items():
        assert len(va) == round(vf * len(labels))  # val_fraction: share of ALL rows
        everything = np.concatenate([tr, va, te])
        assert len(everything) == len(set(everything)) == len(labels)  # disjoint, complete
    assert not np.array_equal(parts[(1, 0.25)][1], parts[(2, 0.25)][1])  # val follows the seed


def test_slide_grouped_parts_share_no_slide(cache):
    groups = np.arange(len(cache.labels)) // 16  # 100 "slides"
    tr, va, te = protocol_split(cache.labels, groups, seed=3, val_fraction=0.25)
    slides = [set(groups[part]) for part in (tr, va, te)]
    assert not (slides[0] & slides[1] or slides[0] & slides[2] or slides[1] & slides[2])
    assert len(tr) + len(va) + len(te) == len(groups) and 0.15 < len(te) / len(groups) < 0.25
    again = protocol_split(cache.labels, groups, seed=4, val_fraction=0.1)[2]
    assert np.array_equal(te, again)


def test_no_test_part_and_bad_fractions(cache):
    tr, va, te = protocol_split(cache.labels, seed=1, val_fraction=0.25, test_fraction=0)
    assert len(te) == 0 and len(va) == 400
    with pytest.raises(ValueError, match="test_fraction"):
        protocol_split(cache.labels, test_fraction=1.0)
    with pytest.raises(ValueError, match="sum must be < 1"):
        protocol_split(cache.labels, val_fraction=0.5, test_fraction=0.6)
    with pytest.raises(SettingError, match="test_fraction"):
        TrainConfig(test_fraction=0.9)


# --------------------------------------------------------------------------- runs


def test_every_run_records_the_same_test_rows(runs):
    a, b = read_split(runs / "a"), read_split(runs / "b")
    columns = ["id", "label", "subset", "split", "protocol", "content"]
    assert list(pd.read_csv(runs / "a" / "split.csv").columns) == columns
    assert a.subset.value_counts().to_dict() == {"train": 880, "val": 400, "test": 320}
    assert b.subset.value_counts().to_dict() == {"train": 1120, "val": 160, "test": 320}
    assert set(a.id[a.subset == "test"]) == set(b.id[b.subset == "test"])
    assert set(a.id[a.subset == "val"]) != set(b.id[b.subset == "val"])


def test_a_run_without_test_rows_is_refused(runs, cache, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs / "a", old)
    split = read_split(old)
    split[split.subset != "test"].to_csv(old / "split.csv", index=False)
    assert len(subset_rows(cache, old, "val")) == 400
    with pytest.raises(ValueError, match="no 'test' rows.*test_fraction=0"):
        subset_rows(cache, old, "test")
    with pytest.raises(ValueError, match="no 'test' rows"):
        results_table([old], cache, limit=8)
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"id": ["x", "y"], "subset": ["train", "holdout"]}).to_csv(bad / "split.csv")
    with pytest.raises(ValueError, match="row 3 has subset 'holdout'"):
        read_split(bad)


def test_scoring_rows_hold_out_training_ids_unless_asked(runs, cache):
    rows, info = scoring_rows(cache, runs / "a")
    assert info == {"subset": "test", "train_rows": 0, "unseen_data": False} and len(rows) == 320
    rows, info = scoring_rows(cache, runs / "a" / "best.keras", "val")  # a file in a run dir
    assert info["subset"] == "val" and len(rows) == 400
    with pytest.raises(ValueError, match="holds 880 of the 880 rows.*include_train"):
        scoring_rows(cache, runs / "a", "all")
    rows, info = scoring_rows(cache, runs / "a", "all", include_train=True)
    assert len(rows) == 1600 and info["train_rows"] == 880


# --------------------------------------------------------------------------- leaderboard


def test_leaderboard_reports_every_run_on_the_same_test_rows(runs, cache, tmp_path):
    csv = tmp_path / "results.csv"
    first, _ = results_table([runs / "a"], cache, csv=csv, limit=40)
    table, curves = results_table([runs / "b"], cache, csv=csv, limit=40)  # merged by run
    assert list(table.index) == ["a", "b"]
    assert list(pd.read_csv(csv).run) == ["a", "b"]
    assert table.n_test.tolist() == [40, 40] and table.test_set.nunique() == 1
    for t in (1, 8):
        assert (table[f"auc_tta{t}_lo"] <= table[f"auc_tta{t}"]).all()
        assert (table[f"auc_tta{t}"] <= table[f"auc_tta{t}_hi"]).all()
        text = table.loc["a", f"auc_tta{t} [95% CI]"]
        assert text == (
            f"{table.loc['a', f'auc_tta{t}']:.3f} [{table.loc['a', f'auc_tta{t}_lo']:.3f}, "
            f"{table.loc['a', f'auc_tta{t}_hi']:.3f}]"
        )
    assert table.loc["a", "auc_tta8"] == pytest.approx(first.loc["a", "auc_tta8"])
    assert list(table.columns[:17]) == [
        "model",
        "weights",
        "params",
        "epochs",
        "best_epoch",
        "train_s",
        "img_per_s",
        "val_auc",
        "n_test",
        "test_seen",
        "auc_tta1 [95% CI]",
        "auc_tta8 [95% CI]",
        "threshold",
        "accuracy",
        "sensitivity",
        "specificity",
        "acc@0.5",
    ]
    assert {"ece", "overlaps_top_ci", "no_imagenet"} <= set(table.columns)
    assert table.overlaps_top_ci.all()  # 40 test rows: the intervals cannot separate the runs
    assert (table.weights == "random").all() and not table.no_imagenet.any()
    assert (table.img_per_s > 0).all() and (table.train_s > 0).all()

    # The threshold comes from the run's VALIDATION rows (Youden's J), not from the test rows.
    model, val = load_model(runs / "a"), subset_rows(cache, runs / "a", "val", 40)
    val_probs = predict_cache(model, cache, val, tta=8, progress=False)
    assert table.loc["a", "threshold"] == pytest.approx(
        youden_threshold(cache.labels[val], val_probs)
    )
    y, p = curves["b"]
    assert len(y) == len(p) == 40

    # Choosing a model never looks at the test rows.
    assert best_run(runs) == max(
        (runs / r for r in ("a", "b")), key=lambda r: run_summary(r)["best_val_auc"]
    )


def test_leaderboard_drops_rows_of_another_test_set(runs, cache, tmp_path):
    csv = tmp_path / "results.csv"
    results_table([runs / "a"], cache, csv=csv, limit=40)
    stale = pd.read_csv(csv)
    stale.loc[0, ["run", "test_set"]] = ["elsewhere", "0123456789ab"]
    stale.to_csv(csv, index=False)
    with pytest.warns(UserWarning, match="dropping elsewhere"):
        table, _ = results_table([runs / "b"], cache, csv=csv, limit=40)
    assert list(table.index) == ["b"]
    stale.drop(columns="test_set").to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"results.csv: not a results table \(no test_set column"):
        results_table([runs / "b"], cache, csv=csv, limit=40)


def test_a_transfer_run_without_imagenet_weights_is_flagged(runs, tmp_path):
    run = tmp_path / "vgg16_transfer"
    shutil.copytree(runs / "a", run)
    config = json.loads((run / "config.json").read_text())
    config.update(model="vgg16", weights=None, trainable=False)  # resolve_weights fell back
    (run / "config.json").write_text(json.dumps(config))
    facts = _training_facts(run, read_split(run))
    assert facts["weights"] == "random, frozen" and facts["no_imagenet"]
    config.update(weights="imagenet")
    (run / "config.json").write_text(json.dumps(config))
    assert _training_facts(run, read_split(run))["weights"] == "imagenet"
