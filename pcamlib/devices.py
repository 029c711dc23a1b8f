"""Which accelerator is here, and what that means for precision and distribution.

Mixed precision pays off only on GPUs (bfloat16 from Ampere on, float16 before), and costs
accuracy for nothing on a CPU, so ``auto`` switches it by device. Data parallelism over one
machine's GPUs wraps existing engines: tf.distribute.MirroredStrategy on TensorFlow,
keras.distribution.DataParallel on JAX. Nothing here imports TensorFlow under JAX.
"""

from __future__ import annotations

import contextlib
import os

import keras

from .config import PRECISION_MODES, STRATEGIES

MODES = ("gpu", "cpu")  # PCAM_MODE: the path the series takes, whatever the device


def forced_mode() -> str | None:
    """``$PCAM_MODE`` ('gpu' or 'cpu'), which makes the series take that device's path: on a
    CPU, 'gpu' rehearses a GPU run (its recipe, bfloat16, augmentation in the model). None:
    the device decides."""
    mode = os.environ.get("PCAM_MODE", "").strip().lower()
    if mode and mode not in MODES:
        raise ValueError(f"PCAM_MODE={mode}: must be one of {', '.join(MODES)} (or unset)")
    return mode or None


def accelerator() -> tuple[str, int]:
    """('gpu'|'cpu', count) for the active Keras backend."""
    if keras.backend.backend() == "jax":
        import jax

        devices = jax.devices()
        return ("gpu" if devices[0].platform == "gpu" else "cpu"), len(devices)
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return ("gpu", len(gpus)) if gpus else ("cpu", len(tf.config.list_logical_devices("CPU")))


def _device_details() -> tuple[str, int]:
    """Name and compute-capability major of the first GPU ('GPU', 0 when unknown)."""
    name, major = "GPU", 0
    with contextlib.suppress(Exception):  # details are niceties: never fail a notebook over them
        if keras.backend.backend() == "jax":
            import jax

            name = jax.devices()[0].device_kind
            major = int(float(getattr(jax.devices()[0], "compute_capability", "0")))
        else:
            import tensorflow as tf

            details = tf.config.experimental.get_device_details(
                tf.config.list_physical_devices("GPU")[0]
            )
            name = details.get("device_name", name)
            major = details.get("compute_capability", (0, 0))[0]
    return name, major


def describe_device() -> str:
    """'CPU', or the GPU's name and count (e.g. '1× NVIDIA H100 80GB HBM3')."""
    kind, count = accelerator()
    return "CPU" if kind == "cpu" else f"{count}× {_device_details()[0]}"


def precision_policy(mode: str | bool | None = "auto") -> str:
    """Resolve a ``mixed_precision`` setting to a Keras dtype policy name.

    'auto': mixed on a GPU, float32 on a CPU (bfloat16 when ``PCAM_MODE=gpu`` rehearses a GPU
    run there); 'on': mixed wherever we are; 'off': float32; 'bfloat16'/'float16': that mixed
    policy. Mixed means bfloat16 on GPUs of compute capability ≥ 8, float16 (with loss
    scaling, added by ``compile``) on older ones.
    """
    if mode in ("off", "float32", "none", False, None):
        return "float32"
    if mode is True:
        mode = "on"
    if mode in ("bfloat16", "float16"):
        return f"mixed_{mode}"
    if mode not in ("auto", "on"):
        raise ValueError(f"mixed_precision must be one of {PRECISION_MODES}; got {mode!r}")
    if accelerator()[0] == "cpu":
        rehearsal = forced_mode() == "gpu"
        return "float32" if mode == "auto" and not rehearsal else "mixed_bfloat16"
    return "mixed_float16" if _device_details()[1] < 8 else "mixed_bfloat16"


@contextlib.contextmanager
def precision(mode: str | bool | None = "auto"):
    """Set the global dtype policy for the block (models built inside it), then restore it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision_policy(mode))
    try:
        yield keras.config.dtype_policy().name
    finally:
        keras.config.set_dtype_policy(previous)


def distribution(name: str = "auto"):
    """A context manager for the requested strategy, and the number of replicas it trains on.

    Build, compile and fit the model inside it. 'auto' mirrors over the local GPUs when there
    are several; 'mirrored' always does (on TensorFlow over the logical CPUs when there is no
    GPU, as the tests run it; on JAX ``keras.distribution.DataParallel`` over its devices).
    The caller scales the batch and the learning rate by the replica count.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "auto":
        kind, count = accelerator()
        name = "mirrored" if kind == "gpu" and count > 1 else "none"
    if name == "none":
        return contextlib.nullcontext(), 1
    if keras.backend.backend() == "jax":
        devices = keras.distribution.list_devices()
        return keras.distribution.DataParallel(devices=devices).scope(), len(devices)
    import tensorflow as tf

    cpu = accelerator()[0] == "cpu"  # MirroredStrategy's default (None) is every local GPU
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")] if cpu else None
    strategy = tf.distribute.MirroredStrategy(cpus)
    return strategy.scope(), strategy.num_replicas_in_sync
