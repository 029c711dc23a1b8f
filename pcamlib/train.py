"""Training runs that leave a complete, resumable run directory behind.

``RUN_DIR/`` holds ``config.json``, ``split.csv`` (which id was train or val, and how the split
was made), ``history.csv``, ``best.keras`` (best val AUC), ``last.keras`` + ``state.json``
(resume point, rewritten atomically every epoch) and ``final.keras``. Running the same
config on the same run directory after an interruption continues from the last finished epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from .cache import PackedCache, atomic_write_text, load_patches
from .config import TrainConfig
from .data import PatchStream, split_indices
from .devices import distribution, precision_policy
from .models import build_model

# Config fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"epochs", "early_stopping", "tensorboard", "cache_dir", "data", "out"}


@dataclass
class TrainResult:
    run_dir: Path
    model: keras.Model
    history: pd.DataFrame
    best_model_path: Path


def save_model_atomic(model: keras.Model, path: Path) -> None:
    """``model.save`` to a temp name, then rename: a crash never leaves half a .keras file."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a ``.keras`` file, or a run directory's ``best.keras`` (falling back to final)."""
    from . import models  # noqa: F401  (registers CaffePreprocess for deserialisation)

    path = Path(path)
    if path.is_dir():
        for name in ("best.keras", "final.keras", "last.keras"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path}: run directory has no best/final/last .keras model")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return keras.saving.load_model(path, compile=False)


def make_optimizer(config: TrainConfig, steps_per_epoch: int, replicas: int = 1):
    """Optimizer + LR schedule; the peak LR scales linearly with replicas (bigger global batch)."""
    peak = config.lr * replicas
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "constant":
        lr = peak
        if warmup:
            lr = keras.optimizers.schedules.CosineDecay(
                peak / 10, decay_steps=1, alpha=1.0, warmup_target=peak, warmup_steps=warmup
            )
    elif config.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            peak / 10 if warmup else peak, decay_steps=max(1, total - warmup), alpha=0.01,
            warmup_target=peak if warmup else None, warmup_steps=warmup,
        )
    elif config.schedule == "onecycle":
        warmup = warmup or max(1, int(0.3 * total))
        lr = keras.optimizers.schedules.CosineDecay(
            peak / 25, decay_steps=max(1, total - warmup), alpha=1e-3,
            warmup_target=peak, warmup_steps=warmup,
        )
    else:
        raise ValueError(f"schedule must be constant, cosine or onecycle; got {config.schedule!r}")
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay or 1e-4)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be adam, adamw or sgd; got {config.optimizer!r}")


def compile_model(model: keras.Model, optimizer, label_smoothing: float = 0.0) -> keras.Model:
    """Adam/BCE with accuracy and ROC AUC, the metrics the series reports."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )
    return model


class RunCheckpoint(keras.callbacks.Callback):
    """Per epoch: history row, best model by val AUC, resume point, early stopping.

    Keeps its own best value and patience in ``state.json`` because Keras' ModelCheckpoint
    and EarlyStopping forget both on restart.
    """

    def __init__(self, run_dir: Path, state: dict, patience: int | None, seed: int):
        super().__init__()
        self.run_dir, self.state, self.patience, self.seed = run_dir, state, patience, seed
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        keras.utils.set_random_seed(self.seed + 1000 * (epoch + 1))  # dropout etc. per epoch
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["seconds"] = round(time.perf_counter() - self._start, 2)
        lr = self.model.optimizer.learning_rate
        row["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        history = self.state["history"] + [row]
        score = row.get("val_auc", row.get("auc", float("nan")))
        improved = not math.isnan(score) and score > self.state["best_val_auc"]
        if improved:
            save_model_atomic(self.model, self.run_dir / "best.keras")
            self.state.update(best_val_auc=score, best_epoch=epoch + 1)
        save_model_atomic(self.model, self.run_dir / "last.keras")
        self.state.update(epoch=epoch + 1, history=history)
        atomic_write_text(self.run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
        atomic_write_text(self.run_dir / "state.json", json.dumps(self.state, indent=1))
        if self.patience and epoch + 1 - self.state["best_epoch"] >= self.patience:
            self.model.stop_training = True
            self.state["stopped_early"] = True


def _check_resumable(run_dir: Path, config: TrainConfig) -> dict | None:
    """Load ``state.json`` when the run directory holds an interrupted run of the same config."""
    state_path = run_dir / "state.json"
    if not state_path.is_file():
        return None
    saved = TrainConfig.from_json((run_dir / "config.json").read_text())
    differ = {
        k for k, v in vars(saved).items() if getattr(config, k) != v and k not in RESUMABLE_CHANGES
    }
    if differ:
        raise ValueError(
            f"{run_dir} holds a run with a different config ({', '.join(sorted(differ))}); "
            "use another --out or delete it"
        )
    return json.loads(state_path.read_text())


def _record_split(run_dir: Path, cache: PackedCache, train_idx, val_idx, how: str) -> None:
    subset = np.full(len(cache), "", dtype=object)
    subset[train_idx], subset[val_idx] = "train", "val"
    frame = pd.DataFrame({"id": cache.ids, "label": cache.labels, "subset": subset, "split": how})
    atomic_write_text(run_dir / "split.csv", frame[frame.subset != ""].to_csv(index=False))


def train(
    config: TrainConfig,
    *,
    cache: PackedCache | None = None,
    verbose: int | str = "auto",
    callbacks: list | None = None,
) -> TrainResult:
    """Train ``config`` into ``config.out``; resumes an interrupted run of the same config."""
    from .recipes import apply_recipe

    config = apply_recipe(config)
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _check_resumable(run_dir, config)
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(precision_policy(config.mixed_precision))

    cache = cache or load_patches(
        config.data, "train", cache_dir=config.cache_dir, groups_csv=config.groups_csv,
        on_error="exclude" if config.exclude_bad else "raise",
    )
    if cache.labels is None:
        raise ValueError(f"{config.data}: training needs labelled data")
    groups = cache.groups if config.split == "slide" else None
    if config.split == "slide" and groups is None:
        raise ValueError("split='slide' needs a patch→slide map (groups_csv, or PCam HDF5 meta)")
    train_idx, val_idx = split_indices(cache.labels, config.val_fraction, config.seed, groups)
    _record_split(run_dir, cache, train_idx, val_idx, config.split)

    scope, replicas = distribution(config.strategy)
    batch = config.batch_size * replicas
    train_stream = PatchStream(cache.images, cache.labels, train_idx, batch_size=batch,
                               shuffle=True, augment=config.augment, seed=config.seed)
    val_stream = PatchStream(cache.images, cache.labels, val_idx, batch_size=max(batch, 128))
    steps = len(train_stream) if config.steps_per_epoch is None else min(
        config.steps_per_epoch, len(train_stream))

    with scope:
        if state is not None and (run_dir / "last.keras").is_file():
            model = keras.saving.load_model(run_dir / "last.keras")  # weights + optimizer state
        else:
            state = {"epoch": 0, "best_val_auc": -1.0, "best_epoch": 0, "history": []}
            model = build_model(config.model, image_size=config.image_size,
                                weights=config.weights, trainable=config.trainable,
                                **config.model_kwargs)
            compile_model(model, make_optimizer(config, steps, replicas), config.label_smoothing)
    atomic_write_text(run_dir / "config.json", config.to_json())
    initial_epoch = state["epoch"]
    train_stream.set_epoch(initial_epoch)

    cbs = [RunCheckpoint(run_dir, state, config.early_stopping, config.seed), *(callbacks or [])]
    if config.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
    if initial_epoch < config.epochs and not state.get("stopped_early"):
        model.fit(
            train_stream, validation_data=val_stream, epochs=config.epochs,
            initial_epoch=initial_epoch, steps_per_epoch=config.steps_per_epoch and steps,
            callbacks=cbs, verbose=verbose,
        )
    save_model_atomic(model, run_dir / "final.keras")
    history = pd.DataFrame(state["history"])
    best = run_dir / "best.keras"
    return TrainResult(run_dir, model, history, best if best.is_file() else run_dir / "final.keras")
