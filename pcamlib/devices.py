"""Which accelerator is here, and what that means for precision and distribution.

Mixed precision pays off only on GPUs/TPUs (bfloat16 on Ampere+ and TPUs, float16 before),
and costs accuracy for nothing on a CPU, so ``auto`` switches it by device. Strategies wrap
existing engines: tf.distribute on the TensorFlow backend, keras.distribution on JAX.

Nothing here imports TensorFlow unless the Keras backend is TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os

import keras

from .limits import PRECISION_MODES, STRATEGIES  # one list each, in limits

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
    """('gpu'|'tpu'|'cpu', count) for the active Keras backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        for kind in ("TPU", "GPU"):
            found = tf.config.list_logical_devices(kind)
            if found:
                return kind.lower(), len(found)
        return "cpu", len(tf.config.list_logical_devices("CPU"))
    if backend == "jax":
        import jax

        devices = jax.devices()
        return devices[0].platform, len(devices)
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return "gpu", torch.cuda.device_count()
    return "cpu", 1


def _device_details(kind: str) -> tuple[str, int]:
    """Name and compute-capability major of the first ``kind`` device (kind.upper(), 0 unknown)."""
    name, major = kind.upper(), 0
    with contextlib.suppress(Exception):  # details are niceties: never fail a notebook over them
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            found = tf.config.list_physical_devices(kind.upper())
            details = tf.config.experimental.get_device_details(found[0])
            name = details.get("device_name", name)
            major = details.get("compute_capability", (0, 0))[0]
        elif backend == "jax":
            import jax

            name = jax.devices()[0].device_kind
            major = int(float(getattr(jax.devices()[0], "compute_capability", "0")))
        elif backend == "torch":
            import torch

            name = torch.cuda.get_device_name(0)
            major = torch.cuda.get_device_capability()[0]
    return name, major


def describe_device() -> str:
    """'CPU', or the accelerator's name and count (e.g. '1× NVIDIA H100 80GB HBM3')."""
    kind, count = accelerator()
    return "CPU" if kind == "cpu" else f"{count}× {_device_details(kind)[0]}"


def precision_policy(mode: str | bool | None = "auto") -> str:
    """Resolve a ``mixed_precision`` setting to a Keras dtype policy name.

    'auto': mixed on GPU/TPU, float32 on CPU (bfloat16 when ``PCAM_MODE=gpu`` rehearses a GPU
    run there); 'on': mixed wherever we are; 'off': float32;
    'bfloat16'/'float16': that mixed policy. Mixed means bfloat16 on TPUs and GPUs of compute
    capability ≥ 8, float16 (with loss scaling, added by ``compile``) on older GPUs.
    """
    if mode in ("off", "float32", "none", False, None):
        return "float32"
    if mode is True:
        mode = "on"
    if mode in ("bfloat16", "float16"):
        return f"mixed_{mode}"
    if mode not in ("auto", "on"):
        raise ValueError(f"mixed_precision must be one of {PRECISION_MODES}; got {mode!r}")
    kind, _ = accelerator()
    if kind == "cpu":
        rehearsal = forced_mode() == "gpu"
        return "float32" if mode == "auto" and not rehearsal else "mixed_bfloat16"
    if kind == "gpu" and _device_details(kind)[1] < 8:  # fast bfloat16 from Ampere on
        return "mixed_float16"
    return "mixed_bfloat16"


@contextlib.contextmanager
def precision(mode: str | bool | None = "auto"):
    """Set the global dtype policy for the block (models built inside it), then restore it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision_policy(mode))
    try:
        yield keras.config.dtype_policy().name
    finally:
        keras.config.set_dtype_policy(previous)


def is_chief() -> bool:
    """False on the non-chief workers of a multi-worker (TF_CONFIG) cluster: they write nothing."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task", {})
    if not task:
        return True
    has_chief = "chief" in config.get("cluster", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    return kind == "chief" or (not has_chief and kind == "worker" and index == 0)


def distribution(name: str = "auto"):
    """A context manager for the requested strategy, and the number of replicas it trains on.

    Build, compile and fit the model inside it. 'auto' uses every local GPU (or TPU core)
    when there are several. 'mirrored'/'data_parallel' mirror over the local GPUs (on
    TensorFlow over the logical CPUs when there is none, as the tests run it; on JAX with
    ``keras.distribution.DataParallel``); 'multiworker' (TF_CONFIG) and 'tpu' are TensorFlow's
    cluster strategies. The caller scales the batch and the learning rate by the replica count.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "none":
        return contextlib.nullcontext(), 1
    if name == "auto":
        kind, count = accelerator()
        if kind == "cpu" or count < 2:
            return contextlib.nullcontext(), 1
        name = "tpu" if kind == "tpu" else "mirrored"
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # The cluster strategies must exist before anything starts the TF runtime.
        if name == "multiworker":
            if "TF_CONFIG" not in os.environ:
                raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable")
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        elif name == "tpu":
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            strategy = tf.distribute.TPUStrategy(resolver)
        else:  # MirroredStrategy's default (None) is every local GPU
            cpu = accelerator()[0] == "cpu"
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")] if cpu else None
            strategy = tf.distribute.MirroredStrategy(cpus)
        return strategy.scope(), strategy.num_replicas_in_sync
    if backend == "jax":
        if name == "multiworker" or (name == "tpu" and accelerator()[0] != "tpu"):
            raise ValueError(f"strategy {name!r} is not available on the JAX backend here")
        devices = keras.distribution.list_devices()
        return keras.distribution.DataParallel(devices=devices).scope(), len(devices)
    raise ValueError(f"strategy {name!r} is not supported on the {backend} backend")
