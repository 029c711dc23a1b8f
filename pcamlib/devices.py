"""Which accelerator is here, and what that means for precision and distribution.

Mixed precision pays off only on GPUs/TPUs (bfloat16 on Ampere+ and TPUs, float16 before),
and costs accuracy for nothing on a CPU, so ``auto`` switches it by device. Strategies wrap
existing engines: tf.distribute on the TensorFlow backend, keras.distribution on JAX.
"""

from __future__ import annotations

import contextlib
import os

import keras


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


def _gpu_supports_bfloat16() -> bool:
    """Compute capability ≥ 8 (Ampere, Hopper…) has fast bfloat16; older GPUs want float16."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
            return details.get("compute_capability", (0, 0))[0] >= 8
        if backend == "jax":
            import jax

            return float(getattr(jax.devices()[0], "compute_capability", "0")) >= 8
        if backend == "torch":
            import torch

            return torch.cuda.get_device_capability()[0] >= 8
    except Exception:
        return False
    return False


def precision_policy(mode: str = "auto") -> str:
    """Resolve 'auto'|'off'|'on'|'bfloat16'|'float16' to a Keras dtype policy name."""
    if mode in ("off", "float32", "none", False, None):
        return "float32"
    if mode in ("bfloat16", "float16"):
        return f"mixed_{mode}"
    kind, _ = accelerator()
    if mode == "auto" and kind == "cpu":
        return "float32"
    if mode not in ("auto", "on"):
        raise ValueError(f"mixed_precision must be auto, on, off, bfloat16 or float16; got {mode!r}")
    if kind == "tpu" or (kind == "gpu" and _gpu_supports_bfloat16()):
        return "mixed_bfloat16"
    return "mixed_float16" if kind == "gpu" else "mixed_bfloat16"


STRATEGIES = ("auto", "none", "mirrored", "multiworker", "tpu", "data_parallel")


def distribution(name: str = "auto"):
    """Enter the requested strategy; returns (context manager, number of replicas).

    'auto' uses every local GPU when there are several, else nothing. On the TensorFlow
    backend 'mirrored' (local GPUs), 'multiworker' (TF_CONFIG) and 'tpu' map to tf.distribute;
    on JAX 'mirrored'/'data_parallel' map to ``keras.distribution.DataParallel``.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    backend = keras.backend.backend()
    kind, count = accelerator()
    if name == "none" or (name == "auto" and (kind == "cpu" or count < 2)):
        return contextlib.nullcontext(), 1
    if name == "auto":
        name = "mirrored"
    if backend == "tensorflow":
        import tensorflow as tf

        if name in ("mirrored", "data_parallel"):
            strategy = tf.distribute.MirroredStrategy()
        elif name == "multiworker":
            if "TF_CONFIG" not in os.environ:
                raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable")
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            strategy = tf.distribute.TPUStrategy(resolver)
        return strategy.scope(), strategy.num_replicas_in_sync
    if backend == "jax":
        if name == "multiworker" or name == "tpu" and kind != "tpu":
            raise ValueError(f"strategy {name!r} is not available on the JAX backend here")
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext(), len(devices)
    raise ValueError(f"strategy {name!r} is not supported on the {backend} backend")
