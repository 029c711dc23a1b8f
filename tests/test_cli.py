"""`pcam` end to end on the embedded real sample: train → predict → check → evaluate."""

import json
import shutil

import pandas as pd
import pytest

from pcamlib.cli import main
from pcamlib.config import SAMPLE_DIR


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "cnn1"
    code = main(
        [
            "train",
            "--data",
            str(SAMPLE_DIR),
            "--model",
            "cnn1",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--steps-per-epoch",
            "4",
            "--batch-size",
            "32",
        ]
    )
    assert code == 0
    return out


def test_train_leaves_a_complete_run_directory(run_dir):
    for name in (
        "config.json",
        "split.csv",
        "history.csv",
        "best.keras",
        "final.keras",
        "last.keras",
        "state.json",
    ):
        assert (run_dir / name).is_file(), name
    split = pd.read_csv(run_dir / "split.csv")
    assert split["subset"].value_counts().to_dict() == {"train": 880, "val": 400, "test": 320}
    assert json.loads((run_dir / "config.json").read_text())["model"] == "cnn1"


def test_predict_writes_probabilities_in_sample_submission_order(run_dir, tmp_path, capsys):
    out = tmp_path / "submission.csv"
    assert (
        main(["predict", "--model", str(run_dir), "--data", str(SAMPLE_DIR), "--out", str(out)])
        == 0
    )
    frame = pd.read_csv(out)
    sample = pd.read_csv(SAMPLE_DIR / "sample_submission.csv")
    assert list(frame.columns) == ["id", "label"]
    assert frame["id"].tolist() == sample["id"].tolist()
    assert frame["label"].between(0, 1).all() and not frame["label"].isin([0, 1]).all()
    assert (
        main(["check-submission", str(out), "--data", str(SAMPLE_DIR / "sample_submission.csv")])
        == 0
    )


def test_evaluate_prints_metrics_json_on_the_runs_validation_ids(run_dir, capsys):
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(run_dir),
                "--data",
                str(SAMPLE_DIR),
                "--subset",
                "val",
                "--tta",
                "8",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 400 and metrics["n_pos"] == 200 and metrics["tta"] == 8
    for key in (
        "roc_auc",
        "pr_auc",
        "accuracy",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "log_loss",
        "ece",
        "op_threshold",
    ):
        assert 0 <= metrics[key] < 10, key


def test_bad_data_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "kaggle"
    shutil.copytree(SAMPLE_DIR, bad, ignore=shutil.ignore_patterns(".pcam-cache", "test"))
    labels = pd.read_csv(bad / "train_labels.csv")
    labels.loc[3, "label"] = 2
    labels.to_csv(bad / "train_labels.csv", index=False)
    code = main(
        [
            "train",
            "--data",
            str(bad),
            "--model",
            "cnn1",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "train_labels.csv:5" in err and "not 0/1" in err and labels.loc[3, "id"] in err


def test_download_without_credentials_explains_what_to_do(tmp_path, monkeypatch, capsys):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nowhere"))
    assert main(["download", "--out", str(tmp_path / "full")]) == 2
    assert "no Kaggle credentials" in capsys.readouterr().err


def test_explicit_flags_win_over_the_recipe_even_when_they_equal_the_defaults(tmp_path, capsys):
    out = tmp_path / "recipe"
    flags = [
        "--epochs",
        "5",
        "--batch-size",
        "64",
        "--optimizer",
        "adam",
    ]  # all TrainConfig defaults
    limits = ["--steps-per-epoch", "1", "--val-limit", "16"]
    args = ["train", "--recipe", "pcam-cpu", "--data", str(SAMPLE_DIR), "--out", str(out)]
    assert main([*args, *flags, *limits]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["epochs"] == 5
    config = json.loads((out / "config.json").read_text())
    assert (config["epochs"], config["batch_size"], config["optimizer"]) == (5, 64, "adam")
    assert config["model"] == "pcamnet" and config["weight_decay"] == 0.0


def test_check_submission_takes_the_dataset_root_as_data(run_dir, tmp_path, capsys):
    sample = pd.read_csv(SAMPLE_DIR / "sample_submission.csv")
    sub = tmp_path / "sub.csv"
    sample.assign(label=[(i + 0.5) / len(sample) for i in range(len(sample))]).to_csv(
        sub, index=False
    )
    for data in (SAMPLE_DIR, SAMPLE_DIR / "test", SAMPLE_DIR / "sample_submission.csv"):
        assert main(["check-submission", str(sub), "--data", str(data)]) == 0, data
    sample.iloc[1:].assign(label=[0.1 * (i % 9 + 1) for i in range(len(sample) - 1)]).to_csv(
        sub, index=False
    )
    assert main(["check-submission", str(sub), "--data", str(SAMPLE_DIR)]) == 2
    assert "1 missing id(s)" in capsys.readouterr().err


def test_predict_refuses_a_test_cache_that_lacks_ids(run_dir, tmp_path, capsys):
    root = tmp_path / "kaggle"
    shutil.copytree(SAMPLE_DIR, root, ignore=shutil.ignore_patterns(".pcam-cache", "train*"))
    bad = sorted((root / "test").iterdir())[0]
    bad.write_bytes(b"not a tiff")
    cache = tmp_path / "test-cache"
    assert main(["pack", str(root), "--split", "test", "--exclude-bad", "--out", str(cache)]) == 0
    capsys.readouterr()
    out = tmp_path / "submission.csv"
    code = main(["predict", "--model", str(run_dir), "--data", str(cache), "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "left out 1 unreadable item" in capsys.readouterr().err


def test_the_gpu_recipe_trains_a_few_steps_in_gpu_mode_on_a_cpu(tmp_path, monkeypatch, capsys):
    """What a GPU session runs, rehearsed here: batch 512, bfloat16, augmentation in the model."""
    monkeypatch.setenv("PCAM_MODE", "gpu")
    out = tmp_path / "gpu"
    flags = ["--steps-per-epoch", "1", "--epochs", "1", "--val-limit", "128"]
    assert (
        main(
            ["train", "--data", str(SAMPLE_DIR), "--recipe", "pcam-gpu", "--out", str(out), *flags]
        )
        == 0
    )
    state = json.loads((out / "state.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert state["policy"] == "mixed_bfloat16" and len(state["history"]) == 1
    assert (config["batch_size"], config["augment_on"]) == (512, "model")
    assert pd.notna(state["history"][0]["val_auc"])
