"""GPU training throughput: pcamlib's whole training pipeline against an in-memory model.fit.

    python benchmarks/gpu_train.py                            # cnn1, vgg19, resnet50
    python benchmarks/gpu_train.py --steps 5 --models cnn1    # CPU smoke: proves the code path
    python benchmarks/gpu_train.py --recipe pcam-gpu --cores 2   # the recipe, on 2 host cores

For every model and precision (float32, then mixed: bfloat16 on Ampere+, float16 before), in
one process and on the same images:

* pcamlib:   ``pcamlib.train.train`` from a packed cache: PatchStream batches read from the
             memmap, the run's optimizer and schedule, RunCheckpoint (val AUC, best/last
             models) around the epoch, as ``pcam train`` runs it;
* in-memory: the same model, optimizer and batch, ``model.fit`` on the training rows held
             in RAM as one numpy array (Keras' own array pipeline).

Only training steps are timed: from the end of step ``--warmup`` (compilation is over) to
the end of the last of ``--steps`` more, by a callback that waits for each step's loss off
the training thread, so it adds no synchronisation. Validation and checkpoint writing at the
end of pcamlib's epoch are not timed. The cache holds the embedded Kaggle sample replicated
(or synthetic patches when the sample is missing) to ``--images`` images, at least enough
that neither side runs out of batches.

``--recipe NAME`` times that recipe instead (its model, batch, precision and augmentation
placement; the in-memory side is the same model without augmentation). ``--cores N`` pins the
process to N host CPUs before Keras starts its thread pools, to compare a Colab-like 2-core
host with a whole one on the same GPU.

Uses the TensorFlow backend when TensorFlow is installed, else JAX (a machine with JAX only
needs ``jax`` + ``keras``); ``KERAS_BACKEND`` overrides. Imports nothing from TensorFlow
itself, and only pcamlib modules that are backend-agnostic.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


def pin_cores(argv: list[str]) -> int:
    """Pin this process to the first ``--cores`` CPUs (before any thread pool starts)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--cores", type=int)
    cores = early.parse_known_args(argv)[0].cores
    if cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    return len(os.sched_getaffinity(0))


CORES = pin_cores(sys.argv[1:])
if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("tensorflow") is None:
    os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pcamlib.cache import PackedCache, load_patches, pack  # noqa: E402
from pcamlib.config import SAMPLE_DIR, TrainConfig  # noqa: E402
from pcamlib.models import build_model  # noqa: E402
from pcamlib.sources import PatchSource  # noqa: E402
from pcamlib.stream import split_indices  # noqa: E402
from pcamlib.train import (  # noqa: E402
    accelerator,
    compile_model,
    distribution,
    make_optimizer,
    precision,
    precision_policy,
    train,
)

MODELS = {"cnn1": 64, "vgg19": 96, "resnet50": 96}  # model → input size
VAL_FRACTION = 0.02  # pcamlib validates after the timed steps; keep that short


@dataclass
class ArraySource(PatchSource):
    """Patches already in memory, packed with one sliced read per chunk."""

    array: np.ndarray | None = None
    block_reads: ClassVar[bool] = True

    def read_many(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]


def make_cache(n: int, folder: Path) -> tuple[PackedCache, str]:
    """``n`` patches: the embedded sample repeated, or synthetic blobs when it is missing."""
    if (SAMPLE_DIR / "train_labels.csv").is_file():
        base = load_patches(SAMPLE_DIR, cache_dir=folder / "sample", progress=False)
        images, labels = np.asarray(base.images), base.labels
        what = f"Kaggle sample ×{n / len(base):.1f}"
    else:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, 1024).astype(np.int8)
        images = rng.integers(0, 256, (1024, 96, 96, 3), dtype=np.uint8)
        images[labels == 1, 32:64, 32:64] //= 2  # something to learn in the centre
        what = "synthetic"
    rows = np.arange(n) % len(images)
    source = ArraySource(
        name=f"bench:{what}:{n}",
        ids=[f"p{i}" for i in range(n)],
        labels=labels[rows],
        array=images[rows],
    )
    return pack(source, folder / f"bench-{n}", progress=False), f"{n:,} images ({what})"


class StepTimer(keras.callbacks.Callback):
    """Seconds from the end of step ``warmup - 1`` to the end of the last step."""

    async_safe = True  # Keras runs batch-end hooks on a worker thread: no per-step sync

    def __init__(self, warmup: int, last: int):
        super().__init__()
        self.warmup, self.last = warmup, last
        self.start = self.end = None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0 and self.warmup == 0:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        # Logs arrive converted to Python numbers here, i.e. after the step has finished.
        if batch == self.warmup - 1:
            self.start = time.perf_counter()
        if batch == self.last:
            self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError("the timed steps did not all run")
        return self.end - self.start


def pcamlib_rate(config: TrainConfig, cache: PackedCache, args, replicas: int) -> float:
    timer = StepTimer(args.warmup, args.warmup + args.steps - 1)
    shutil.rmtree(config.out, ignore_errors=True)
    train(config, cache=cache, verbose=0, callbacks=[timer])
    return args.steps * config.batch_size * replicas / timer.seconds


def in_memory_rate(config: TrainConfig, x, y, args) -> float:
    timer = StepTimer(args.warmup, args.warmup + args.steps - 1)
    steps = args.warmup + args.steps
    with precision(config.mixed_precision):
        scope, replicas = distribution(config.strategy)
        with scope:
            keras.utils.set_random_seed(config.seed)
            model = build_model(config.model, image_size=config.image_size, **config.model_kwargs)
            compile_model(model, make_optimizer(config, steps, replicas))
            batch = config.batch_size * replicas
            model.fit(
                x,
                y,
                batch_size=batch,
                epochs=1,
                steps_per_epoch=steps,
                shuffle=True,
                callbacks=[timer],
                verbose=0,
            )
    return args.steps * batch / timer.seconds


def device_name() -> str:
    kind, count = accelerator()
    name = kind.upper()
    if keras.backend.backend() == "jax":
        import jax

        name = jax.devices()[0].device_kind
    elif kind == "gpu":
        import tensorflow as tf

        gpu = tf.config.list_physical_devices("GPU")[0]
        name = tf.config.experimental.get_device_details(gpu).get("device_name", name)
    return f"{count}× {name}" if count > 1 else name


def table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        cells = zip(row, widths, strict=True)
        text = [str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(cells)]
        print("  " + "  ".join(text))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma list, from " + ",".join(MODELS)
    )
    parser.add_argument("--precisions", default="off,on", help="mixed_precision settings to run")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before (compile)")
    parser.add_argument("--batch", type=int, default=256, help="batch size per replica")
    parser.add_argument("--images", type=int, default=20_000, help="cache size (at least)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating repeats (median)")
    parser.add_argument("--strategy", default="none", help="pcamlib strategy (none: one device)")
    parser.add_argument("--workdir", help="scratch folder kept between runs (default: temporary)")
    parser.add_argument("--cores", type=int, help="pin to N host CPUs (default: all)")
    parser.add_argument("--recipe", help="time this recipe (e.g. pcam-gpu) instead of --models")
    args = parser.parse_args(argv)
    models = [args.recipe] if args.recipe else args.models.split(",")
    if args.recipe:
        args.batch = TrainConfig.from_recipe(args.recipe).batch_size
    if not args.recipe and (unknown := set(models) - set(MODELS)):
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {list(MODELS)}")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="pcam-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        _, replicas = distribution(args.strategy)
        need = (args.warmup + args.steps) * args.batch * replicas / (1 - VAL_FRACTION)
        cache, what = make_cache(max(args.images, math.ceil(need) + args.batch), work)
        train_rows, _ = split_indices(cache.labels, VAL_FRACTION, seed=0)
        x, y = np.asarray(cache.images[train_rows]), cache.labels[train_rows].astype(np.float32)
        print(
            f"{device_name()}, Keras {keras.__version__} on {keras.backend.backend()}; {what}; "
            f"batch {args.batch}×{replicas}; {args.steps} timed steps after {args.warmup}; "
            f"median of {args.rounds} round(s); {CORES} host CPU cores"
        )
        rows = [("model", "precision", "pcamlib img/s", "in-memory img/s", "pcamlib/in-memory")]
        for name in models:
            for mode in args.precisions.split(","):
                run = dict(
                    data=str(cache.path),
                    out=str(work / "run"),
                    epochs=1,
                    steps_per_epoch=args.warmup + args.steps,
                    val_fraction=VAL_FRACTION,
                    test_fraction=0.0,  # the same training rows as the in-memory side
                    seed=0,
                    mixed_precision=mode,
                    strategy=args.strategy,
                )
                if args.recipe:  # the recipe's model, batch and augmentation
                    config = TrainConfig.from_recipe(name, **run)
                else:
                    config = TrainConfig(
                        model=name, image_size=MODELS[name], batch_size=args.batch, lr=1e-4, **run
                    )
                ours, theirs = [], []
                for r in range(args.rounds):
                    for side in ("pcamlib", "memory") if r % 2 == 0 else ("memory", "pcamlib"):
                        if side == "pcamlib":
                            ours.append(pcamlib_rate(config, cache, args, replicas))
                        else:
                            theirs.append(in_memory_rate(config, x, y, args))
                    keras.backend.clear_session()
                a, b = statistics.median(ours), statistics.median(theirs)
                policy = precision_policy(mode)
                rows.append(
                    (
                        f"{name}@{config.image_size}",
                        policy,
                        f"{a:,.0f}",
                        f"{b:,.0f}",
                        f"{a / b:.2f}×",
                    )
                )
                print(f"  … {rows[-1][0]} {policy}: {a:,.0f} vs {b:,.0f} img/s", flush=True)
        print()
        table(rows)
        print(f"\n  tensorflow imported: {'tensorflow' in sys.modules}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
