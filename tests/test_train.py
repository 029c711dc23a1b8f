"""Training runs: LR schedules, a SIGKILLed run resumed to the same history, early stopping."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from pcamlib.cache import pack
from pcamlib.config import REPO_ROOT, SAMPLE_DIR, TrainConfig
from pcamlib.train import make_optimizer, read_state, train

# One training run, as a user would start it: ``python -c DRIVER '<config json>'``.
DRIVER = """
import json, sys
from pcamlib.config import TrainConfig
from pcamlib.train import train
train(TrainConfig(**json.loads(sys.argv[1])), verbose=0)
"""


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory):
    return pack(SAMPLE_DIR, tmp_path_factory.mktemp("cache"), progress=False)


def start(config: TrainConfig) -> subprocess.Popen:
    """``train(config)`` in a new process, the way a user would start it."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, config.to_json()],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_after_epoch(proc: subprocess.Popen, run_dir: Path, epoch: int, report: dict) -> None:
    """SIGKILL ``proc`` as soon as ``state.json`` reports ``epoch`` finished epochs."""
    state, deadline = run_dir / "state.json", time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= epoch:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    _, report["stderr"] = proc.communicate(timeout=60)
    report["returncode"] = proc.returncode


def metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "history.csv").drop(columns="seconds")


def lr_curve(steps: int = 10, replicas: int = 1, **changes) -> np.ndarray:
    """The learning rate of every optimizer step of a 5-epoch run of ``steps`` steps each."""
    config = TrainConfig(lr=1e-3, epochs=5, **changes)
    optimizer = make_optimizer(config, steps, replicas)
    values = []
    for step in range(5 * steps + 3):
        optimizer.iterations.assign(step)
        values.append(float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
    return np.array(values)


def test_lr_schedules_warm_up_then_hold_or_decay():
    cosine = lr_curve(schedule="cosine", warmup_epochs=1)
    rise, fall = np.diff(cosine[:11]), np.diff(cosine[10:51])
    assert cosine[0] == pytest.approx(1e-4) and cosine[10] == pytest.approx(1e-3)
    assert (rise > 0).all() and np.allclose(rise, rise[0])  # linear warm-up
    assert (fall < 0).all() and cosine[50:] == pytest.approx(1e-5)  # decays to 1% of the peak
    assert cosine[30] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2, rel=1e-5)  # cosine midpoint

    onecycle = lr_curve(schedule="onecycle")  # 30% warm-up when none is given
    assert onecycle.argmax() == 15 and onecycle[0] == pytest.approx(1e-3 / 25)
    assert onecycle[-1] == pytest.approx(1e-6)

    assert lr_curve(schedule="constant") == pytest.approx(1e-3)
    held = lr_curve(schedule="constant", warmup_epochs=0.5)
    assert (np.diff(held[:6]) > 0).all() and held[5:] == pytest.approx(1e-3)

    assert lr_curve(schedule="cosine", replicas=4).max() == pytest.approx(4e-3)  # linear scaling
    with pytest.raises(ValueError, match="schedule"):
        lr_curve(schedule="step")


# On the host, augmentation follows (seed, epoch, batch); in the model, the layers' own
# SeedGenerators, which (like Dropout's) a resumed run starts afresh.
ON_MODEL = dict(augment_on="model", shift=4, color_jitter=0.1, hed_jitter=0.1)


@pytest.mark.parametrize("placement", [{}, ON_MODEL], ids=["host-augmentation", "in-model"])
def test_sigkilled_run_resumes_from_its_last_epoch_without_losing_or_repeating_one(
    sample_cache, tmp_path, placement
):
    # Dropout, BatchNorm, augmentation and a warm-up + cosine schedule: what a resume carries
    # over is the finished epochs, the weights, the optimizer and the schedule's position.
    config = TrainConfig(
        **placement,
        model="pcamnet",
        model_kwargs={"widths": [8, 16]},
        data=str(sample_cache.path),
        epochs=4,
        batch_size=32,
        steps_per_epoch=3,
        lr=1e-3,
        schedule="cosine",
        warmup_epochs=1,
        augment=True,
    )
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    proc, report = start(config.replace(out=str(interrupted))), {}
    watcher = threading.Thread(target=kill_after_epoch, args=(proc, interrupted, 2, report))
    watcher.start()
    train(config.replace(out=str(whole)), verbose=0)  # meanwhile, the uninterrupted run
    watcher.join()
    assert report["returncode"] == -signal.SIGKILL, report["stderr"][-3000:]
    state = read_state(interrupted / "last.keras")  # the authority; history.csv may lag it
    killed_at = state["epoch"]
    assert 2 <= killed_at < 4 and len(state["history"]) == killed_at
    assert len(metrics(interrupted)) in (killed_at - 1, killed_at)
    train(config.replace(out=str(interrupted)), verbose=0)  # the same call again

    expected, resumed = metrics(whole), metrics(interrupted)
    assert list(resumed.columns) == [
        "epoch", "accuracy", "auc", "loss", "val_accuracy", "val_auc", "val_loss", "learning_rate"
    ]  # fmt: skip
    assert resumed.epoch.tolist() == [1, 2, 3, 4]
    # The epochs before the kill are the uninterrupted run's (the same computation, bit for bit
    # in practice; the tolerance allows float32 rounding-order noise); after it the schedule
    # goes on where it was, and the losses differ only by Dropout's and augmentation's draws.
    done = slice(0, killed_at)
    np.testing.assert_allclose(resumed[done], expected[done], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(resumed.learning_rate, expected.learning_rate, rtol=1e-6)
    assert np.isfinite(resumed.to_numpy()).all()
    final = read_state(interrupted / "last.keras")
    assert final["epoch"] == 4 and final["history"][:killed_at] == state["history"]
    for name in ("best.keras", "final.keras", "config.json", "split.csv"):
        assert (interrupted / name).is_file()


class Crash(BaseException):
    """Stands in for a kill: nothing in train() may catch it."""


def test_a_crash_before_any_write_resumes_without_losing_or_duplicating_a_row(
    sample_cache, tmp_path, monkeypatch
):
    import pcamlib.train as train_module

    config = TrainConfig(
        model="pcamnet",
        model_kwargs={"widths": [8]},
        data=str(sample_cache.path),
        epochs=2,
        batch_size=16,
        steps_per_epoch=2,
        val_limit=32,
        lr=1e-3,
        augment=True,
    )
    writers = {
        name: getattr(train_module, name) for name in ("save_model_atomic", "atomic_write_text")
    }
    calls = []

    def patch(crash_at: int | None) -> None:
        calls.clear()
        for name, write in writers.items():

            def guarded(*args, _write=write, **kwargs):
                calls.append(args[1] if len(args) > 1 else args[0])
                if len(calls) == crash_at:
                    raise Crash  # killed just before this write
                return _write(*args, **kwargs)

            monkeypatch.setattr(train_module, name, guarded)

    patch(None)
    train(config.replace(out=str(tmp_path / "whole")), verbose=0)
    expected, writes = metrics(tmp_path / "whole"), len(calls)
    assert writes >= 9  # split, config, then per epoch best/last/state/history, then final
    for crash_at in range(1, writes + 1):
        run = tmp_path / f"crash-{crash_at}"
        patch(crash_at)
        with pytest.raises(Crash):
            train(config.replace(out=str(run)), verbose=0)
        last = run / "last.keras"
        done = read_state(last)["epoch"] if last.is_file() else 0  # epochs committed
        patch(None)
        train(config.replace(out=str(run)), verbose=0)  # the same call again
        resumed = metrics(run)
        assert resumed.epoch.tolist() == [1, 2], f"crash before write {crash_at}"
        np.testing.assert_allclose(resumed[:done], expected[:done], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(resumed.learning_rate, expected.learning_rate, rtol=1e-6)
        assert (
            read_state(run / "last.keras")["history"]
            == json.loads((run / "state.json").read_text())["history"]
        )


def test_early_stopping_holds_on_rerun_and_extends_when_relaxed(sample_cache, tmp_path):
    # lr=1e-12: every Adam step is below float32 resolution, so the weights never change and
    # val AUC never improves after epoch 1.
    config = TrainConfig(
        data=str(sample_cache.path),
        out=str(tmp_path / "run"),
        epochs=5,
        batch_size=32,
        steps_per_epoch=1,
        lr=1e-12,
        val_fraction=0.08,
        early_stopping=1,
    )
    first = train(config, verbose=0)
    assert first.history.epoch.tolist() == [1, 2]
    state = read_state(tmp_path / "run" / "last.keras")
    assert state["stopped_early"] and state["best_epoch"] == 1
    assert first.best_model_path.name == "best.keras"
    assert keras.config.dtype_policy().name == "float32"  # train() leaves the policy as it was

    again = train(config, verbose=0)  # a stopped run stays stopped
    assert again.history.epoch.tolist() == [1, 2]
    longer = train(config.replace(early_stopping=None, epochs=3), verbose=0)
    assert longer.history.epoch.tolist() == [1, 2, 3]
    assert longer.history.val_auc.nunique() == 1

    with pytest.raises(ValueError, match="different config.*lr"):
        train(config.replace(lr=1e-3), verbose=0)


def test_tensorboard_logs_or_a_clear_error_before_training(sample_cache, tmp_path):
    config = TrainConfig(
        data=str(sample_cache.path),
        out=str(tmp_path),
        epochs=1,
        steps_per_epoch=1,
        tensorboard=True,
    )
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ImportError, match="tensorboard"):
            train(config, verbose=0)
        assert not (tmp_path / "config.json").exists()
    else:
        train(config, verbose=0)
        assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_val_auc_still_ranks_when_every_probability_is_tiny():
    """A short run with stale BatchNorm statistics puts every patch below p=0.005."""
    from sklearn.metrics import roc_auc_score

    from pcamlib.train import compile_model

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000).astype("float32")
    probs = 1 / (1 + np.exp(-(-28 + 2 * y + rng.normal(0, 1.5, 1000))))  # all < 1e-9
    identity = keras.Sequential([keras.Input((1,)), keras.layers.Activation("linear")])
    compile_model(identity, "adam")
    logs = identity.evaluate(probs[:, None].astype("float32"), y, verbose=0, return_dict=True)
    assert logs["auc"] == pytest.approx(roc_auc_score(y, probs), abs=0.005)  # Keras' default: 0.5
