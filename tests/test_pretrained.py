"""The shipped model: loads offline, starts a fine-tune, and is refused clearly when broken."""

import numpy as np
import pytest

from pcamlib import pretrained
from pcamlib.config import SAMPLE_DIR, SettingError, TrainConfig
from pcamlib.train import init_weights, load_model


def test_the_shipped_model_loads_offline_and_is_small():
    model = load_model("pretrained")
    assert model.name == "pcamnet" and model.input_shape == (None, 96, 96, 3)
    assert pretrained.MODEL_FILE.stat().st_size <= 5 * 2**20  # no optimizer state
    probs = model.predict(np.zeros((2, 96, 96, 3), np.uint8), verbose=0)
    assert probs.shape == (2, 1) and probs.dtype == np.float32


def test_the_card_says_how_it_was_made_and_how_it_scores():
    card = pretrained.card()
    assert card["data"]["pcam_splits"] == ["train"]  # never PCam valid/test: Kaggle's test
    for tta in ("tta1", "tta8"):
        valid = card["pcam_valid"][tta]
        assert valid["auc_lo"] < valid["roc_auc"] < valid["auc_hi"]
    assert card["command"] and card["commit"] and card["history"]


@pytest.mark.parametrize("content", [None, b"not a zip"])
def test_a_missing_or_corrupt_file_is_refused_in_one_line_naming_it(tmp_path, monkeypatch, content):
    path = tmp_path / "pcam-cpu.keras"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setattr(pretrained, "MODEL_FILE", path)
    with pytest.raises(pretrained.PretrainedError) as info:
        load_model("pretrained")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_init_pretrained_starts_the_recipe_from_the_shipped_weights(tmp_path):
    config = TrainConfig.from_recipe("pcam-cpu", init="pretrained", data=str(SAMPLE_DIR), out="r")
    weights = init_weights(config)
    shipped = pretrained.load_pretrained().get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(weights, shipped, strict=True))


def test_init_is_refused_before_writing_when_it_does_not_fit(tmp_path, tiny_run):
    source = tiny_run(tmp_path / "small").run_dir  # pcamnet widths 8, 16
    out = tmp_path / "new"
    for init, reason in ((source, "layers differ"), (tmp_path / "nope", "not found")):
        config = TrainConfig.from_recipe(
            "pcam-cpu", init=str(init), data=str(SAMPLE_DIR), out=str(out)
        )
        with pytest.raises(SettingError, match=reason) as info:
            init_weights(config)
        assert str(info.value).startswith(f"init={str(init)!r}: ")
    assert not out.exists()


def test_a_fine_tune_from_a_run_starts_from_its_weights(tmp_path, tiny_run):
    source = tiny_run(tmp_path / "a")
    config = TrainConfig(
        model="pcamnet", model_kwargs={"widths": [8, 16]}, init=str(source.run_dir),
        data=str(SAMPLE_DIR), out=str(tmp_path / "b"),
    )  # fmt: skip
    weights = init_weights(config)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(weights, load_model(source.run_dir).get_weights(), strict=True)
    )


@pytest.fixture(scope="module")
def sample():
    from pcamlib.cache import load_patches

    return load_patches(SAMPLE_DIR, "train", progress=False)


def test_seen_rows_are_the_listed_twins_on_the_sample_and_unknown_on_other_kaggle_data(sample):
    import pandas as pd

    listed = pd.read_csv(pretrained.OVERLAP_FILE, dtype={"id": str})
    twins = set(listed.id[listed.split == "train"])
    assert set(np.asarray(sample.ids)[pretrained.seen_mask(sample)]) == twins and len(twins) > 100

    class Part:  # 100 of the sample's patches: Kaggle training data the list does not cover
        ids, labels, content = sample.ids[:100], sample.labels[:100], sample.content[:100]

    assert pretrained.seen_mask(Part) is None
    Part.ids = [f"0/patch{i}.jpg" for i in range(100)]  # not Kaggle's: only exact copies count
    assert not pretrained.seen_mask(Part).any()


def test_exact_copies_of_its_training_patches_are_seen_by_content(sample):
    class Copies:  # two of its training patches under other names, beside two sample patches
        ids, labels = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], np.array([0, 1, 0, 1])
        content = [*sorted(pretrained._train_content())[:2], *sample.content[:2]]

    assert pretrained.seen_mask(Copies).tolist() == [True, True, False, False]


def test_the_leaderboard_scores_it_on_the_protocol_rows_without_its_twins(
    tmp_path, sample, tiny_run
):
    import pandas as pd

    from pcamlib.evaluate import best_run, results_table

    run = pretrained.pretrained_run(tmp_path / "pretrained", sample)
    tiny_run(tmp_path / "small")  # the protocol's defaults: the same 320 test rows
    split = pd.read_csv(run / "split.csv", dtype={"id": str})
    seen = set(np.asarray(sample.ids)[pretrained.seen_mask(sample)])
    assert set(split.id[split.subset == "train"]) == seen
    table, _ = results_table([tmp_path / "small", run], sample)
    seen_in_test = int(((split.subset == "train") & (split.protocol == "test")).sum())
    assert table.loc["small", ["n_test", "test_seen"]].tolist() == [320, 0]
    assert table.loc["pretrained", ["n_test", "test_seen"]].tolist() == [
        320 - seen_in_test,
        seen_in_test,
    ]
    assert seen_in_test > 0 and table.loc["pretrained", "weights"] == "from pretrained"
    assert best_run(tmp_path).name == "pretrained"  # by validation AUC: it works


def test_a_fine_tune_never_validates_or_tests_on_the_shipped_models_twins(tmp_path, sample):
    import pandas as pd

    from pcamlib.train import train

    config = TrainConfig.from_recipe(
        "pcam-cpu", init="pretrained", data=str(SAMPLE_DIR), out=str(tmp_path / "ft"),
        epochs=1, steps_per_epoch=1, val_limit=16,
    )  # fmt: skip
    split = pd.read_csv(train(config, cache=sample, verbose=0).run_dir / "split.csv", dtype=str)
    twins = split[split.id.isin(np.asarray(sample.ids)[pretrained.seen_mask(sample)])]
    assert (twins.subset == "train").all() and (twins.protocol == "test").any()


def test_a_fresh_clone_submits_from_the_pretrained_model_without_training(tmp_path, sample):
    from pcamlib.cache import load_patches
    from pcamlib.evaluate import best_run, predict_cache
    from pcamlib.submission import check_submission, expected_test_ids, write_submission

    runs = tmp_path / "runs"  # what 04 does when 02/03 have not run
    pretrained.pretrained_run(runs / "pretrained", sample)
    best = best_run(runs)
    test = load_patches(SAMPLE_DIR, "test", progress=False)
    probs = predict_cache(load_model(best), test, tta=8, progress=False)
    expected = expected_test_ids(SAMPLE_DIR / "sample_submission.csv")
    path = write_submission(test.ids, probs, tmp_path / "s.csv", expected_ids=expected, run=best)
    submission = check_submission(path, expected)
    assert best.name == "pretrained" and len(submission) == 29
    assert submission.label.nunique() == 29  # a ranking, not 0/1 labels


def test_where_its_overlap_is_unknown_it_submits_unscored_after_one_line(tmp_path):
    import shutil

    import pandas as pd

    from pcamlib.evaluate import run_summary
    from pcamlib.submission import check_no_leak

    data = tmp_path / "full"  # Kaggle training data the overlap list does not cover
    (data / "train").mkdir(parents=True)
    labels = pd.read_csv(SAMPLE_DIR / "train_labels.csv", dtype=str).head(40)
    labels.to_csv(data / "train_labels.csv", index=False)
    for i in labels["id"]:
        shutil.copy(SAMPLE_DIR / "train" / f"{i}.tif", data / "train")
    with pytest.warns(UserWarning, match=r"trained on is unknown .*: not scored$") as caught:
        best = pretrained.best_or_pretrained(tmp_path / "runs", data)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert best == pretrained.MODEL_FILE and not (tmp_path / "runs" / "pretrained").exists()
    assert run_summary(best)["run"] == "pretrained" and load_model(best).name == "pcamnet"
    assert check_no_leak(best)[0].pcam_splits == {"train"}  # Kaggle's test set: unseen
