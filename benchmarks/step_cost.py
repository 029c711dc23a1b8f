"""Training cost per step of two model settings, side by side: CPU seconds and wall seconds.

    python benchmarks/step_cost.py --recipe pcam-cpu \\
        --versus '{"image_size": 64, "model_kwargs": {"widths": [16, 32, 64, 128]}}'

Builds the recipe's model and the model that the ``--versus`` settings make of the same recipe,
compiles both as ``train()`` does (the recipe's optimizer and schedule), and times ``--steps``
training steps of each, in ``--rounds`` alternating rounds, on random uint8 patches at the
recipe's batch size. Host augmentation is left out: it is the same for both. CPU time
(``time.process_time``) is the cost that stays put on a shared or throttled machine; wall time
is printed beside it. Prints medians and the CPU and wall ratios versus/recipe.
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
    parser.add_argument("--versus", required=True, help="JSON settings that change the recipe")
    parser.add_argument("--steps", type=int, default=8, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args(argv)


def compiled_model(config, steps: int):
    """The model ``train()`` would build for ``config`` (no input layers: host augmentation)."""
    from pcamlib.models import build_model
    from pcamlib.train import compile_model, make_optimizer

    model = build_model(config.model, image_size=config.image_size, **config.model_kwargs)
    return compile_model(model, make_optimizer(config, steps), config.label_smoothing)


def main() -> None:
    args = parse_args()
    from pcamlib.config import TrainConfig

    configs = {
        args.recipe: TrainConfig(recipe=args.recipe),
        "versus": TrainConfig(recipe=args.recipe, **json.loads(args.versus)),
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
