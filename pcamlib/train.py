"""Resumable training runs on this machine's GPUs (or CPU). ``RUN_DIR/``: config.json, split.csv,
history.csv, best.keras (best val AUC), last.keras (the run state in its zip: one rename commits
weights, optimizer and state), final.keras, state.json (a readable copy), tensorboard/. A resumed
run replays each epoch's batch order and host augmentation (they follow seed and epoch)."""

from __future__ import annotations

import contextlib
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

from . import pretrained
from .augment import host_augmentation, model_front, with_input_layers
from .cache import PackedCache, atomic_path, atomic_write_text
from .config import PRECISION_MODES, STRATEGIES, SettingError, TrainConfig, check_paths, forced_mode
from .models import build_model, fetch_imagenet_weights
from .stream import EpochBatches, PatchStream, run_split, training_cache, write_split

# Config fields that may change before a run resumes; the LR schedule keeps its first length.
RESUMABLE_CHANGES = {"epochs", "early_stopping", "tensorboard", "cache_dir", "data", "out", "tta"}
STATE_ENTRY = "pcamlib/state.json"  # the run state's name inside last.keras
SCHEDULES = {"constant": (10, 1.0), "cosine": (10, 0.01), "onecycle": (25, 1e-3)}  # see below
# ROC AUC thresholds spaced in logit space, sigmoid(-40…16): Keras' 200 in [0, 1] cannot rank
# probabilities all below 0.005, where stale BatchNorm statistics put a short run's patches.
AUC_THRESHOLDS = (1 / (1 + np.exp(-np.linspace(-40, 16, 999)))).tolist()


def accelerator() -> tuple[str, int]:
    """('gpu'|'cpu', count): the GPUs when there are any, else the (logical) CPUs."""
    devices = keras.distribution.list_devices()  # 'gpu:0', …
    return ("gpu" if devices[0].startswith("gpu") else "cpu"), len(devices)


def _device_details() -> tuple[str, int]:
    """Name and compute-capability major of the first GPU ('GPU', 0 when unknown)."""
    with contextlib.suppress(Exception):  # niceties: never fail a notebook over them
        if keras.backend.backend() == "jax":
            import jax

            gpu = jax.devices()[0]
            return gpu.device_kind, int(float(getattr(gpu, "compute_capability", "0")))
        import tensorflow as tf

        info = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        return info.get("device_name", "GPU"), info.get("compute_capability", (0, 0))[0]
    return "GPU", 0


def describe_device() -> str:
    """'CPU', or the GPUs' count and name (e.g. '1× NVIDIA H100 80GB HBM3')."""
    kind, count = accelerator()
    return "CPU" if kind == "cpu" else f"{count}× {_device_details()[0]}"


def precision_policy(mode: str = "auto") -> str:
    """The dtype policy of ``mixed_precision`` ``mode``: 'auto' is mixed on a GPU (or with
    ``PCAM_MODE=gpu``), else float32; mixed is bfloat16 from compute capability 8, else float16."""
    if mode not in PRECISION_MODES:
        raise ValueError(f"mixed_precision must be one of {PRECISION_MODES}; got {mode!r}")
    if mode in ("off", "bfloat16", "float16"):
        return "float32" if mode == "off" else f"mixed_{mode}"
    if accelerator()[0] == "cpu":
        return "float32" if mode == "auto" and forced_mode() != "gpu" else "mixed_bfloat16"
    return "mixed_float16" if _device_details()[1] < 8 else "mixed_bfloat16"


@contextlib.contextmanager
def precision(mode: str = "auto"):
    """The global dtype policy of ``mode`` for the block (models built inside it), then the old."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision_policy(mode))
    try:
        yield keras.config.dtype_policy().name
    finally:
        keras.config.set_dtype_policy(previous)


def distribution(name: str = "auto"):
    """(scope, replicas): build, compile and fit inside the scope. 'auto' mirrors over several
    local GPUs; 'mirrored' always does (over logical CPUs without a GPU; JAX: DataParallel)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    kind, count = accelerator()
    if name == "none" or (name == "auto" and (kind == "cpu" or count == 1)):
        return contextlib.nullcontext(), 1
    if keras.backend.backend() == "jax":
        devices = keras.distribution.list_devices()
        return keras.distribution.DataParallel(devices=devices).scope(), len(devices)
    import tensorflow as tf

    cpus = [d.name for d in tf.config.list_logical_devices("CPU")] if kind == "cpu" else None
    strategy = tf.distribute.MirroredStrategy(cpus)  # None: every local GPU
    return strategy.scope(), strategy.num_replicas_in_sync


@dataclass
class TrainResult:
    """What :func:`train` returns: the run directory, the final model and the history."""

    run_dir: Path
    model: keras.Model
    history: pd.DataFrame
    best_model_path: Path

    def __repr__(self) -> str:  # short: notebooks show it, and paths differ per machine
        best = self.history.get("val_auc", pd.Series([np.nan])).max()
        run, epochs, path = self.run_dir.name, len(self.history), self.best_model_path.name
        return f"TrainResult(run={run!r}, {epochs=}, best_val_auc={best:.4f}, best_model={path!r})"


def save_model_atomic(model: keras.Model, path: Path, state: dict | None = None) -> None:
    """``model.save`` (with ``state`` added to its zip) to a temp name, then rename."""
    with atomic_path(path) as tmp:
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
    """A ``.keras`` file, a run directory's best (else final, else last) model, or
    ``"pretrained"``: the PCamNet shipped with pcamlib."""
    if str(path) == pretrained.NAME:
        return pretrained.load_pretrained()
    path, names = Path(path), ("best.keras", "final.keras", "last.keras")
    path = next((path / n for n in names if (path / n).is_file()), path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found (nor best/final/last.keras in it)")
    return keras.saving.load_model(path, compile=False)


def make_optimizer(config: TrainConfig, steps_per_epoch: int, replicas: int = 1):
    """The optimizer on its schedule, the peak LR × replicas (a bigger global batch): a linear
    warm-up over ``warmup_epochs`` (one-cycle: 30% by default) from peak/10 (one-cycle: /25),
    then 'constant' holds, 'cosine' decays to 1% and 'onecycle' to 0.1% (``SCHEDULES``)."""
    peak, total = config.lr * replicas, max(1, config.epochs * steps_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "onecycle":
        warmup = warmup or max(1, int(0.3 * total))
    divisor, alpha = SCHEDULES[config.schedule]
    start, target = (peak / divisor, peak) if warmup else (peak, None)
    lr = keras.optimizers.schedules.CosineDecay(  # alpha=1: 'constant' is flat
        start, max(1, total - warmup), alpha, warmup_target=target, warmup_steps=warmup
    )
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay or 1e-4)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(lr)


def compile_model(model: keras.Model, optimizer, label_smoothing: float = 0.0) -> keras.Model:
    """Binary cross-entropy with accuracy and ROC AUC, the metrics the series reports."""
    auc = keras.metrics.AUC(name="auc", thresholds=AUC_THRESHOLDS)
    loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    model.compile(optimizer, loss, metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), auc])
    return model


def _stops(state: dict, config: TrainConfig) -> bool:
    """All epochs done, or no val-AUC gain for ``early_stopping`` epochs."""
    waited = state["epoch"] - state["best_epoch"]
    return state["epoch"] >= config.epochs or waited >= (config.early_stopping or np.inf)


class RunCheckpoint(keras.callbacks.Callback):
    """Per epoch: history row, best model, resume point and early stopping, keeping best and
    patience in the run state (Keras' own callbacks forget both on restart)."""

    def __init__(self, run_dir: Path, state: dict, config: TrainConfig, data: EpochBatches):
        super().__init__()
        self.run_dir, self.state, self.config, self.data = run_dir, state, config, data

    def on_epoch_begin(self, epoch, logs=None):
        self.data.stream.set_epoch(epoch)  # not on_epoch_end: Keras also calls it before epoch 1
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self._start, 2)
        state = self.state
        if row.get("val_auc", np.nan) > state["best_val_auc"]:  # NaN never is
            save_model_atomic(self.model, self.run_dir / "best.keras")
            state.update(best_val_auc=row["val_auc"], best_epoch=epoch + 1)
        state.update(epoch=epoch + 1, history=[*state["history"], row])
        state["stopped_early"] = state["epoch"] < self.config.epochs and _stops(state, self.config)
        save_model_atomic(self.model, self.run_dir / "last.keras", state)  # the commit point
        write_readable_copies(self.run_dir, state)
        self.model.stop_training = state["stopped_early"]


def write_readable_copies(run_dir: Path, state: dict) -> None:
    """``state.json`` and ``history.csv`` from the state committed in ``last.keras``."""
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
    if differ := sorted(differ - RESUMABLE_CHANGES):
        raise ValueError(
            f"{run_dir} holds a run with a different config ({', '.join(differ)}); "
            "use another --out or delete it"
        )
    return state


def _build(config: TrainConfig, weights: str | None = None) -> keras.Model:
    kwargs = dict(image_size=config.image_size, trainable=config.trainable, weights=weights)
    return build_model(config.model, **kwargs, **config.model_kwargs)


def init_weights(config: TrainConfig) -> list | None:
    """The weights ``config.init`` names, checked against the model ``config`` builds."""
    if config.init is None:
        return None
    try:
        source = load_model(config.init)
    except (OSError, ValueError) as exc:
        raise SettingError("init", config.init, str(exc).splitlines()[0]) from None
    if [w.shape for w in source.weights] != [w.shape for w in _build(config).weights]:
        why = f"its layers differ from model {config.model} with image_size {config.image_size} "
        why += f"and model_kwargs {config.model_kwargs} (for 'pretrained': recipe pcam-cpu)"
        raise SettingError("init", config.init, why)
    return source.get_weights()


def train(
    config: TrainConfig,
    *,
    cache: PackedCache | None = None,
    verbose: int | str = "auto",
    callbacks: list | None = None,
) -> TrainResult:
    """Train ``config`` into ``config.out``, resuming an interrupted run of the same config;
    nothing is written before every check has passed. ``batch_size`` is per replica, the peak
    LR ``lr × replicas``; an epoch is the train split's full batches (or ``steps_per_epoch``)."""
    check_paths(config, need_data=cache is None)
    if config.weights == "imagenet":  # refused in one line when it cannot be had
        fetch_imagenet_weights(config.model)
    need = ("tensorflow", "tensorboard") if config.tensorboard else ()  # tf.summary writes logs
    if missing := [m for m in need if importlib.util.find_spec(m) is None]:
        raise ImportError(f"tensorboard=True needs {' and '.join(missing)} (pip install them)")
    run_dir = Path(config.out)
    state = _resume_state(run_dir, config)
    init = None if state["epoch"] else init_weights(config)
    cache = training_cache(config, cache)
    scope, replicas = distribution(config.strategy)
    *rows, protocol = run_split(config, cache, replicas)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_split(run_dir, config, cache, rows, protocol)
    atomic_write_text(run_dir / "config.json", config.to_json())
    with precision(config.mixed_precision) as policy, scope:
        if state["epoch"] and (state["policy"], state["replicas"]) != (policy, replicas):
            was = f"{state['policy']} run on {state['replicas']} replica(s)"
            why = "the history will differ from an uninterrupted run"
            warnings.warn(f"resuming a {was} with {policy} on {replicas}: {why}", stacklevel=2)
        state.update(policy=policy, replicas=replicas)
        model = _fit(config, state, run_dir, cache, rows, replicas, init, verbose, callbacks or [])
    best = next(p for p in (run_dir / "best.keras", run_dir / "final.keras") if p.is_file())
    return TrainResult(run_dir, model, pd.DataFrame(state["history"]), best)


def _fit(config, state, run_dir, cache, rows, replicas, init, verbose, callbacks):
    """Fit the resumed (or a new, compiled) model from its saved epoch on; save it as final."""
    (train_idx, val_idx, _), batch = rows, config.batch_size * replicas
    order = dict(
        shuffle=True, seed=config.seed, workers=config.workers, **host_augmentation(config)
    )
    stream = PatchStream(cache.images, cache.labels, train_idx, batch_size=batch, **order)
    steps = min(config.steps_per_epoch or len(train_idx), len(train_idx) // batch)
    train_data = EpochBatches(stream, steps)
    val_data = PatchStream(cache.images, cache.labels, val_idx, batch_size=max(batch, 128))
    keras.utils.set_random_seed(config.seed)
    if state["epoch"]:  # resume: weights and optimizer; a kill may have left the copies behind
        model = keras.saving.load_model(run_dir / "last.keras")
        write_readable_copies(run_dir, state)
    else:
        model = _build(config, config.weights)
        if init is not None:
            model.set_weights(init)
        model = with_input_layers(model, model_front(config, cache.images, train_idx))
        model = compile_model(
            model, make_optimizer(config, steps, replicas), config.label_smoothing
        )
    callbacks = [RunCheckpoint(run_dir, state, config, train_data), *callbacks]
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
    if not _stops(state, config):
        fit = dict(validation_data=val_data, callbacks=callbacks, verbose=verbose)
        model.fit(train_data, epochs=config.epochs, initial_epoch=state["epoch"], **fit)
    save_model_atomic(model, run_dir / "final.keras")
    return model
