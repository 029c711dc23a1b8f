"""Training cost per step of two model settings, side by side: CPU seconds and wall seconds.

    python benchmarks/step_cost.py --recipe pcam-cpu \\
        --versus '{"image_size": 64, "model_kwargs": {"widths": [16, 32, 64, 128]}}'

Builds the recipe's model and the model that the ``--versus`` settings make of the same recipe,
compiles both as ``train()`` does (the recipe's optimizer and schedule), and times ``--steps``
training steps of each, in ``--rounds`` alternating rounds, on random uint8 patches at the
recipe's batch size. Host augmentation is left out: it is the same for both. CPU time
(``time.process_time``) is the cost that stays put on a shared or throttled machine; wall time
is printed beside it. Prints medians and the CPU and wall ratios versus/recipe.

    python benchmarks/step_cost.py --recipe pcam-cpu --data pcam-jpeg/data/train --steps 30

With ``--data`` (a dataset root) it compares instead, in alternating rounds, an epoch of
``--steps`` batches inside ``train()`` (the second epoch of a fresh run, so tracing is left out;
validation shrunk in proportion to the shorter epoch) with the same number of bare steps of the
recipe's model, and times the host's share alone: the recipe's ``PatchStream`` batches (read
and host augmentation) for those steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="pcam-cpu")
    parser.add_argument("--versus", help="JSON settings that change the recipe")
    parser.add_argument("--data", help="dataset root: time train()'s epoch against bare steps")
    parser.add_argument("--steps", type=int, default=8, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args(argv)


def compiled_model(config, steps: int):
    """The model ``train()`` would build for ``config`` (no input layers: host augmentation)."""
    from pcamlib.models import build_model
    from pcamlib.train import compile_model, make_optimizer

    model = build_model(config.model, image_size=config.image_size, **config.model_kwargs)
    return compile_model(model, make_optimizer(config, steps), config.label_smoothing)


def epoch_in_train(config, steps: int, out: str) -> dict[str, float]:
    """Where the second epoch of a fresh ``train()`` run of ``steps`` spends its wall time, per
    step: the whole epoch, the first batch, the other batches, validation, the rest."""
    import keras

    from pcamlib.train import train

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.marks, self.t0 = [], time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.marks.append(time.perf_counter())

        def on_test_begin(self, logs=None):
            self.test0 = time.perf_counter()

        def on_test_end(self, logs=None):
            self.test = time.perf_counter() - self.test0

    timer = Timer()
    result = train(
        config.replace(out=out, epochs=2, steps_per_epoch=steps), verbose=0, callbacks=[timer]
    )
    epoch = float(result.history["seconds"].iloc[1])
    first = timer.marks[0] - timer.t0
    batches = timer.marks[-1] - timer.marks[0]
    return {
        "train": epoch / steps,
        "first batch": first / steps,
        "batches": batches / steps,
        "validation": timer.test / steps,
        "rest": (epoch - first - batches - timer.test) / steps,
    }


def host_batches(config, cache, steps: int) -> tuple[float, float]:
    """CPU and wall seconds per batch of the recipe's stream (read + host augmentation)."""
    import numpy as np

    from pcamlib.augment import host_augmentation
    from pcamlib.stream import PatchStream

    rows = np.arange(len(cache))
    stream = PatchStream(
        cache.images, cache.labels, rows, batch_size=config.batch_size, shuffle=True,
        **host_augmentation(config),
    )  # fmt: skip
    c, w = time.process_time(), time.perf_counter()
    for i in range(steps):
        stream[i]
    return (time.process_time() - c) / steps, (time.perf_counter() - w) / steps


def compare_with_train(args) -> None:
    """train()'s epoch per step against bare steps and the host's share, alternating rounds."""
    import tempfile

    import numpy as np

    from pcamlib.cache import load_patches
    from pcamlib.config import TrainConfig

    cache = load_patches(args.data, "train")
    full_steps = int(len(cache) * 0.95) // TrainConfig.from_recipe(args.recipe).batch_size
    n_val = int(len(cache) * TrainConfig.from_recipe(args.recipe).val_fraction)
    config = TrainConfig.from_recipe(
        args.recipe, data=args.data, val_limit=max(2, n_val * args.steps // full_steps)
    )
    batch = config.batch_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * args.steps, 96, 96, 3), dtype=np.uint8)
    y = rng.integers(0, 2, len(x)).astype("float32")
    model = compiled_model(config, args.steps)
    model.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, verbose=0)  # warm-up
    times = {k: [] for k in ("bare", "train", "first batch", "batches", "validation", "rest")}
    times |= {"host cpu": [], "host wall": []}
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.rounds):
            w = time.perf_counter()
            model.fit(x, y, batch_size=batch, verbose=0)
            times["bare"].append((time.perf_counter() - w) / args.steps)
            for key, value in epoch_in_train(config, args.steps, f"{work}/run{r}").items():
                times[key].append(value)
            cpu, wall = host_batches(config, cache, args.steps)
            times["host cpu"].append(cpu)
            times["host wall"].append(wall)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.recipe}, batch {batch}, {args.steps} steps, validation {config.val_limit} rows "
        f"(medians of {args.rounds} rounds, s/step): bare {med['bare']:.3f}, "
        f"in train() {med['train']:.3f} (first batch {med['first batch']:.3f}, the other "
        f"batches {med['batches']:.3f}, validation {med['validation']:.3f}, the rest "
        f"{med['rest']:.3f}), host batches {med['host wall']:.3f} wall / "
        f"{med['host cpu']:.3f} CPU"
    )
    print(f"train() / bare: {med['train'] / med['bare']:.2f}× wall time per step")


def main() -> None:
    args = parse_args()
    if args.data:
        return compare_with_train(args)
    if not args.versus:
        raise SystemExit("step_cost.py: give --versus SETTINGS or --data DIR")
    from pcamlib.config import TrainConfig

    configs = {
        args.recipe: TrainConfig.from_recipe(args.recipe),
        "versus": TrainConfig.from_recipe(args.recipe, **json.loads(args.versus)),
    }
    import numpy as np

    batch = configs[args.recipe].batch_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * args.steps, 96, 96, 3), dtype=np.uint8)
    y = rng.integers(0, 2, len(x)).astype("float32")
    models = {}
    for name, config in configs.items():
        models[name] = compiled_model(config, args.steps)
        models[name].fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, verbose=0)  # warm-up
        print(
            f"{name}: {config.model} {config.image_size} px {config.model_kwargs}, "
            f"{models[name].count_params():,} parameters",
            flush=True,
        )
    cpu, wall = {n: [] for n in models}, {n: [] for n in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            c, w = time.process_time(), time.perf_counter()
            model.fit(x, y, batch_size=batch, verbose=0)
            cpu[name].append((time.process_time() - c) / args.steps)
            wall[name].append((time.perf_counter() - w) / args.steps)
    for name in models:
        print(
            f"{name:>10}: CPU s/step {statistics.median(cpu[name]):.3f} "
            f"(rounds {', '.join(f'{v:.3f}' for v in cpu[name])}), "
            f"wall s/step {statistics.median(wall[name]):.3f} "
            f"(rounds {', '.join(f'{v:.3f}' for v in wall[name])})"
        )
    for label, times in (("CPU", cpu), ("wall", wall)):
        ratio = statistics.median(times["versus"]) / statistics.median(times[args.recipe])
        print(f"versus / {args.recipe}: {ratio:.2f}× {label} time per step (batch {batch})")


if __name__ == "__main__":
    main()
