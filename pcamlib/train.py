"""Training runs that leave a complete, resumable run directory behind.

``RUN_DIR/`` holds ``config.json``, ``split.csv`` (see :mod:`pcamlib.stream`), ``history.csv``
(one row per finished epoch), ``best.keras`` (best val AUC so far), ``last.keras``,
``final.keras`` (the last epoch run, not the best) and ``tensorboard/`` when asked for.
``last.keras`` is the one authority to resume from: the run state (epoch, best, patience,
history) sits inside its zip beside weights and optimizer state, so one atomic rename commits
both. ``state.json`` and ``history.csv`` are readable copies that a kill can leave one epoch
behind; resuming rewrites them. A resumed run continues from the saved epoch, weights and
optimizer, with the batch order and host augmentation of that epoch (they follow (seed,
epoch)); Dropout and in-model augmentation draw fresh masks, so its losses are not bit-equal
to an uninterrupted run's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from .augment import host_augmentation, model_front, with_input_layers
from .cache import PackedCache, atomic_path, atomic_write_text, load_patches
from .config import SettingError, TrainConfig, check_paths
from .devices import distribution, precision
from .models import build_model, fetch_imagenet_weights
from .pretrained import NAME as PRETRAINED
from .pretrained import load_pretrained, seen_ids
from .sources import H5_PATTERN, SPLITS, is_pcam_layout
from .stream import PatchStream, pcam_parts, protocol_split

# Config fields that may change between an interrupted run and its resumption. A longer
# ``epochs`` extends a finished run; the LR schedule keeps the length it was built with.
RESUMABLE_CHANGES = {"epochs", "early_stopping", "tensorboard", "cache_dir", "data", "out", "tta"}
STATE_ENTRY = "pcamlib/state.json"  # the run state, stored inside last.keras
# Per schedule: the warm-up starts at peak / divisor; the decay ends at alpha × peak.
SCHEDULES = {"constant": (10, 1.0), "cosine": (10, 0.01), "onecycle": (25, 1e-3)}


@dataclass
class TrainResult:
    """What :func:`train` returns: the run directory, the final model and the history."""

    run_dir: Path
    model: keras.Model
    history: pd.DataFrame
    best_model_path: Path

    def __repr__(self) -> str:  # short: notebooks show it, and paths differ per machine
        best = self.history["val_auc"].max() if "val_auc" in self.history else float("nan")
        return (
            f"TrainResult(run={self.run_dir.name!r}, epochs={len(self.history)}, "
            f"best_val_auc={best:.4f}, best_model={self.best_model_path.name!r})"
        )


def save_model_atomic(model: keras.Model, path: Path, state: dict | None = None) -> None:
    """``model.save`` to a temp name, then rename: a crash never leaves half a .keras file.

    ``state`` (JSON-able) is added to the same zip before the rename; see :func:`read_state`.
    """
    with atomic_path(path, durable=True) as tmp:
        model.save(tmp)
        if state is not None:
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(STATE_ENTRY, json.dumps(state))


def read_state(path: str | os.PathLike) -> dict | None:
    """The run state stored in a ``last.keras`` file, or None when there is none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(STATE_ENTRY))
    except (FileNotFoundError, KeyError, zipfile.BadZipFile):
        return None


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a ``.keras`` file, a run directory's ``best.keras`` (falling back to final), or
    ``"pretrained"``: the PCamNet shipped with pcamlib (:mod:`pcamlib.pretrained`)."""
    if str(path) == PRETRAINED:
        return load_pretrained()
    path = Path(path)
    if path.is_dir():
        names = ("best.keras", "final.keras", "last.keras")
        path = next((path / n for n in names if (path / n).is_file()), path)
        if path.is_dir():
            raise FileNotFoundError(f"{path}: run directory has no best/final/last .keras model")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return keras.saving.load_model(path, compile=False)


def make_optimizer(config: TrainConfig, steps_per_epoch: int, replicas: int = 1):
    """Optimizer + LR schedule; the peak LR scales linearly with replicas (bigger global batch).

    Warm-up rises linearly (from peak/10, or peak/25 for one-cycle) to the peak over
    ``warmup_epochs``; then 'constant' stays there, 'cosine' decays to 1% of the peak by the
    last step and 'onecycle' (30% warm-up unless given) decays to 0.1%.
    """
    peak = config.lr * replicas
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "onecycle":
        warmup = warmup or max(1, int(0.3 * total))
    divisor, alpha = SCHEDULES[config.schedule]
    lr = peak
    if warmup or config.schedule != "constant":  # alpha=1: 'constant' is flat after warm-up
        lr = keras.optimizers.schedules.CosineDecay(
            peak / divisor if warmup else peak,
            decay_steps=max(1, total - warmup),
            alpha=alpha,
            warmup_target=peak if warmup else None,
            warmup_steps=warmup,
        )
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay or 1e-4)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    raise ValueError(f"optimizer must be adam, adamw or sgd; got {config.optimizer!r}")


# ROC AUC thresholds evenly spaced in logit space, sigmoid(-40…16): Keras' default 200
# thresholds evenly spaced in [0, 1] cannot rank probabilities that all sit below 0.005, which
# is where a short run with stale BatchNorm statistics puts every patch (val_auc then reads
# 0.5 and best.keras is chosen blind).
AUC_THRESHOLDS = (1 / (1 + np.exp(-np.linspace(-40, 16, 999)))).tolist()


def compile_model(model: keras.Model, optimizer, label_smoothing: float = 0.0) -> keras.Model:
    """Binary cross-entropy with accuracy and ROC AUC, the metrics the series reports."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc", thresholds=AUC_THRESHOLDS),
        ],
    )
    return model


class EpochBatches(keras.utils.PyDataset):
    """The first ``steps`` batches of every epoch of ``stream``, from batch 0 each epoch.

    ``fit(steps_per_epoch=…)`` keeps one iterator across epochs, so epoch 2 would go on
    mid-way through epoch 1's order and a resumed run could not replay it. The epoch is set by
    :class:`RunCheckpoint` when it begins (Keras' ``on_epoch_end`` also runs once before the
    first epoch, so it cannot count them).
    """

    def __init__(self, stream: PatchStream, steps: int):
        super().__init__(workers=stream.workers)
        self.stream, self.steps = stream, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int):
        return self.stream[i]


def _stops(state: dict, epochs: int, patience: int | None) -> bool:
    """Is the run over: all epochs done, or no val-AUC gain for ``patience`` epochs."""
    return state["epoch"] >= epochs or bool(
        patience and state["epoch"] - state["best_epoch"] >= patience
    )


class RunCheckpoint(keras.callbacks.Callback):
    """Per epoch: history row, best model by val AUC, resume point, early stopping.

    Keeps its own best value and patience in the run state because Keras' ModelCheckpoint
    and EarlyStopping forget both on restart.
    """

    def __init__(self, run_dir: Path, state: dict, config: TrainConfig, data: EpochBatches):
        super().__init__()
        self.run_dir, self.state, self.config, self.data = run_dir, state, config, data

    def on_epoch_begin(self, epoch, logs=None):
        self.data.stream.set_epoch(epoch)  # batch order and host augmentation of this epoch
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self._start, 2)
        state = self.state
        if row.get("val_auc", float("nan")) > state["best_val_auc"]:  # NaN never is
            save_model_atomic(self.model, self.run_dir / "best.keras")
            state.update(best_val_auc=row["val_auc"], best_epoch=epoch + 1)
        state.update(epoch=epoch + 1, history=[*state["history"], row])
        state["stopped_early"] = state["epoch"] < self.config.epochs and _stops(
            state, self.config.epochs, self.config.early_stopping
        )
        save_model_atomic(self.model, self.run_dir / "last.keras", state)  # the commit point
        write_readable_copies(self.run_dir, state)
        if state["stopped_early"]:
            self.model.stop_training = True


def write_readable_copies(run_dir: Path, state: dict) -> None:
    """``state.json`` and ``history.csv`` from the state in ``last.keras`` (the authority)."""
    atomic_write_text(run_dir / "state.json", json.dumps(state, indent=1))
    atomic_write_text(run_dir / "history.csv", pd.DataFrame(state["history"]).to_csv(index=False))


def _resume_state(run_dir: Path, config: TrainConfig) -> dict:
    """The state of an interrupted run of the same config in ``run_dir``, else epoch 0's."""
    state = read_state(run_dir / "last.keras")
    if state is None:
        return {"epoch": 0, "best_val_auc": -1.0, "best_epoch": 0, "history": []}
    saved = json.loads((run_dir / "config.json").read_text())
    current = json.loads(config.to_json())  # tuples → lists, as config.json stores them
    differ = {k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k)}
    differ -= RESUMABLE_CHANGES
    if differ:
        raise ValueError(
            f"{run_dir} holds a run with a different config ({', '.join(sorted(differ))}); "
            "use another --out or delete it"
        )
    return state


def _check_before_writing(config: TrainConfig, cache: PackedCache | None) -> None:
    """Refuse what the files, the network or the packages cannot honour (values: TrainConfig)."""
    check_paths(config, need_data=cache is None)
    data = str(config.data)
    if config.split == "pcam" and cache is None and not _pcam_data(data):
        raise SettingError("split", "pcam", _needs_pcam(data, "is not that layout"))
    if config.weights == "imagenet":
        fetch_imagenet_weights(config.model)
    if config.tensorboard:  # Keras' TensorBoard callback writes through tf.summary
        missing = [m for m in ("tensorflow", "tensorboard") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"tensorboard=True needs {' and '.join(missing)} (pip install them)")


def _pcam_data(data: str) -> bool:
    """PCam's HDF5 layout with its three splits, or a packed cache (its ids tell later)."""
    return is_pcam_layout(data) or (Path(data) / "meta.json").is_file()


def _needs_pcam(data: str, what: str) -> str:
    files = H5_PATTERN.format(split="{train,valid,test}", xy="{x,y}")
    return (
        f"needs PCam's train, valid and test splits ({files}, as pcam download --source pcam "
        f"writes them); {data} {what}"
    )


def _training_data(config: TrainConfig, cache: PackedCache | None) -> PackedCache:
    if cache is None:
        cache = load_patches(
            config.data,
            "train",
            cache_dir=config.cache_dir,
            groups_csv=config.groups_csv,
            on_error="exclude" if config.exclude_bad else "raise",
        )
    if cache.labels is None:
        raise ValueError(f"{config.data}: training needs labelled data")
    if config.split == "slide" and cache.groups is None:
        raise ValueError("split='slide' needs a patch→slide map (groups_csv, or PCam HDF5 meta)")
    return cache


def run_split(config: TrainConfig, cache: PackedCache, replicas: int):
    """Rows (train, val, test) of the protocol for this run, and each row's protocol part.

    Validation is trimmed as the run needs it; rows its init model trained on move to train.
    """
    train_idx, val_idx, test_idx = _protocol_rows(config, cache)
    protocol = np.full(len(cache), "", dtype=object)
    protocol[train_idx], protocol[val_idx], protocol[test_idx] = "train", "val", "test"
    seen = _seen_by_init(config, cache, np.concatenate([val_idx, test_idx]))
    if seen.any():  # the init model trained on these: never validate or test on them
        train_idx = np.sort(
            np.concatenate([train_idx, np.flatnonzero(seen & (protocol != "train"))])
        )
        val_idx, test_idx = val_idx[~seen[val_idx]], test_idx[~seen[test_idx]]
    if config.val_limit is not None:
        per_class = [val_idx[cache.labels[val_idx] == c][: config.val_limit // 2] for c in (0, 1)]
        val_idx = np.sort(np.concatenate(per_class))
    # Every replica needs an equal share of every batch (JAX refuses uneven ones), so a
    # data-parallel run validates on a multiple of the replica count (≤ replicas-1 fewer)
    # and trains on full batches only.
    val_idx = val_idx[: len(val_idx) - len(val_idx) % replicas]
    if config.batch_size * replicas > len(train_idx):
        per_replica = f" / {replicas} replicas" if replicas > 1 else ""
        raise SettingError(
            "batch_size",
            config.batch_size,
            f"must be ≤ the {len(train_idx)} training rows" + per_replica,
        )
    return train_idx, val_idx, test_idx, protocol


def _protocol_rows(config: TrainConfig, cache: PackedCache):
    """The protocol's (train, val, test) rows: PCam's own splits with ``split="pcam"``, else
    drawn by :func:`protocol_split` (from the PCam train rows where several splits are there).
    """
    parts = pcam_parts(cache.ids)
    found = set() if parts is None else set(parts)
    if config.split == "pcam":
        if found != set(SPLITS):
            what = (
                f"holds only PCam's {' and '.join(sorted(found))} split"
                if found
                else "has no PCam HDF5 ids (train/N, valid/N, test/N)"
            )
            raise SettingError("split", "pcam", _needs_pcam(str(cache.path), what))
        return tuple(np.flatnonzero(parts == part) for part in SPLITS)
    pool = np.flatnonzero(parts == "train") if len(found) > 1 else np.arange(len(cache))
    rows = protocol_split(  # test: the same rows for every run
        cache.labels[pool],
        cache.groups[pool] if config.split == "slide" else None,
        seed=config.seed,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
    )
    return tuple(pool[r] for r in rows)


def _seen_by_init(config: TrainConfig, cache: PackedCache, scored: np.ndarray) -> np.ndarray:
    """Rows of ``cache`` the shipped model trained on, when the run starts from it; only the
    ``scored`` rows (validation and test) decide whether that is unknown."""
    if config.init != PRETRAINED:
        return np.zeros(len(cache), bool)
    seen = seen_ids(cache, scored)
    if seen is None:
        warnings.warn(
            f"{config.data}: which patches the pretrained model trained on is unknown (Kaggle "
            "training data holds twins of PCam's train split): this run's test score may "
            "count some of them",
            stacklevel=3,
        )
        seen = set()
    return pd.Series(cache.ids, dtype=object).isin(seen).to_numpy()


def init_weights(config: TrainConfig) -> list | None:
    """The weights ``config.init`` names, checked against the model ``config`` builds."""
    if config.init is None:
        return None
    try:
        source = load_model(config.init)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise SettingError("init", config.init, str(exc).splitlines()[0]) from None
    model = build_model(
        config.model,
        image_size=config.image_size,
        trainable=config.trainable,
        **config.model_kwargs,
    )
    shapes = [tuple(w.shape) for w in model.weights]
    if [tuple(w.shape) for w in source.weights] != shapes:
        raise SettingError(
            "init",
            config.init,
            f"its layers differ from model {config.model} with image_size {config.image_size} "
            f"and model_kwargs {config.model_kwargs} (for 'pretrained': recipe pcam-cpu)",
        )
    return source.get_weights()


def _model(config, state, run_dir, cache, train_idx, steps, replicas, policy, init=None):
    """The resumed model (weights + optimizer state), or a new, compiled one (from ``init``)."""
    if state["epoch"]:  # last.keras is only written once an epoch has finished
        if (state.get("policy"), state.get("replicas")) != (policy, replicas):
            warnings.warn(
                f"resuming a {state.get('policy')} run on {state.get('replicas')} "
                f"replica(s) with {policy} on {replicas}: the history will differ from "
                "an uninterrupted run",
                stacklevel=3,
            )
        return keras.saving.load_model(run_dir / "last.keras")
    model = build_model(
        config.model,
        image_size=config.image_size,
        weights=config.weights,
        trainable=config.trainable,
        **config.model_kwargs,
    )
    if init is not None:
        model.set_weights(init)
    # Stain normalisation and on-device augmentation as the first layers.
    model = with_input_layers(model, model_front(config, cache.images, train_idx))
    return compile_model(model, make_optimizer(config, steps, replicas), config.label_smoothing)


def train(
    config: TrainConfig,
    *,
    cache: PackedCache | None = None,
    verbose: int | str = "auto",
    callbacks: list | None = None,
) -> TrainResult:
    """Train ``config`` into ``config.out``; resumes an interrupted run of the same config.

    Under a distribution strategy ``batch_size`` is per replica (the global batch is
    ``batch_size × replicas``) and the peak LR is ``lr × replicas``. An epoch is the full
    batches of the training split, or the first ``steps_per_epoch`` of them; the next epoch
    starts again from a new order. Nothing is written before every check has passed.

    Examples:
        >>> result = train(TrainConfig.from_recipe("pcam-cpu", data="data/sample", out="runs/r"))
        >>> result.history[["epoch", "val_auc"]]
    """
    _check_before_writing(config, cache)
    init = init_weights(config) if not (Path(config.out) / "last.keras").is_file() else None
    run_dir = Path(config.out)
    state = _resume_state(run_dir, config)
    cache = _training_data(config, cache)
    scope, replicas = distribution(config.strategy)
    train_idx, val_idx, test_idx, protocol = run_split(config, cache, replicas)
    run_dir.mkdir(parents=True, exist_ok=True)
    subset = np.full(len(cache), "", dtype=object)
    subset[train_idx], subset[val_idx], subset[test_idx] = "train", "val", "test"
    split = pd.DataFrame(
        {
            "id": cache.ids,
            "label": cache.labels,
            "subset": subset,
            "split": config.split,
            "protocol": protocol,  # differs from subset where the init model saw a row
            "content": cache.content,  # what a run saw is pixels, not file names
        }
    )
    atomic_write_text(run_dir / "split.csv", split[split.subset != ""].to_csv(index=False))
    atomic_write_text(run_dir / "config.json", config.to_json())

    with precision(config.mixed_precision) as policy:
        batch = config.batch_size * replicas
        stream = PatchStream(
            cache.images,
            cache.labels,
            train_idx,
            batch_size=batch,
            shuffle=True,
            seed=config.seed,
            workers=config.workers,
            **host_augmentation(config),  # nothing when config.augment_on == "model"
        )
        steps = min(config.steps_per_epoch or len(train_idx), len(train_idx) // batch)
        train_data = EpochBatches(stream, steps)
        val_data = PatchStream(cache.images, cache.labels, val_idx, batch_size=max(batch, 128))
        with scope:
            keras.utils.set_random_seed(config.seed)
            model = _model(config, state, run_dir, cache, train_idx, steps, replicas, policy, init)
            state.update(policy=policy, replicas=replicas)
            if state["epoch"]:  # a kill may have left them behind
                write_readable_copies(run_dir, state)
            cbs = [RunCheckpoint(run_dir, state, config, train_data), *(callbacks or [])]
            if config.tensorboard:
                cbs.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
            if not _stops(state, config.epochs, config.early_stopping):
                model.fit(
                    train_data,
                    validation_data=val_data,
                    epochs=config.epochs,
                    initial_epoch=state["epoch"],
                    callbacks=cbs,
                    verbose=verbose,
                )
            save_model_atomic(model, run_dir / "final.keras")
    best = run_dir / "best.keras"
    return TrainResult(
        run_dir,
        model,
        pd.DataFrame(state["history"]),
        best if best.is_file() else run_dir / "final.keras",
    )
