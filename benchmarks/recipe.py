"""Reproduce a recipe's number end to end: train on one folder, evaluate on held-out slides.

    python benchmarks/recipe.py --train pcam-jpeg/data/train \\
        --valid pcam-jpeg/data/valid --out runs/recipe-cpu
    python benchmarks/recipe.py --recipe pcam-gpu --epochs 6 \\
        --set '{"image_size": 96, "model_kwargs": {"widths": [24, 48, 96, 192], "stem": 24}}' \\
        --train pcam-jpeg/data/train --valid pcam-jpeg/data/valid --out runs/gpu-stem96

(``pcam-jpeg``: a clone of github.com/vflorenc/AI4ALL-PCam, PCam patches in class folders.)

Prints wall times (pack, train, evaluate) and validation metrics with TTA×1 and TTA×8. Rerunning
with the same --out resumes (or reuses) the run, so the train time printed is then the
remaining time only; use a fresh --out for a timing. ``--set JSON`` changes recipe settings
(TrainConfig fields; explicit values win over the recipe, ``--epochs`` over ``--set``).
``--against RUN`` scores another run on the same patches and prints the paired DeLong
difference of the two TTA×8 AUCs.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# Set by the flags themselves: --set may not change them.
OWN_FIELDS = ("recipe", "data", "out", "test_fraction")


def recipe_config(args: argparse.Namespace):
    """The run's TrainConfig: the recipe, with --set and --epochs (when given) winning over it."""
    from pcamlib.config import TrainConfig

    try:
        explicit = json.loads(args.set) if args.set else {}
    except json.JSONDecodeError as error:
        raise SystemExit(f"--set is not JSON: {error}") from None
    if not isinstance(explicit, dict):
        raise SystemExit(f"--set must be a JSON object of settings, not {args.set}")
    if taken := [key for key in OWN_FIELDS if key in explicit]:
        raise SystemExit(f"--set cannot change {', '.join(taken)}: use the flags")
    if args.epochs is not None:
        explicit["epochs"] = args.epochs
    # --valid is the held-out test set (other slides): no test part is cut from --train.
    return TrainConfig.from_recipe(
        args.recipe, data=args.train, out=args.out, test_fraction=0.0, **explicit
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="labelled training data (any layout)")
    parser.add_argument("--valid", required=True, help="labelled held-out data (other slides)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--recipe", default="pcam-cpu")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--set", help="JSON settings (TrainConfig fields) that change the recipe's")
    parser.add_argument("--against", help="another run directory to compare with (paired)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    config = recipe_config(args)  # refuses a bad setting before any data is packed

    import keras

    from pcamlib.cache import atomic_write_text, load_patches
    from pcamlib.evaluate import evaluate
    from pcamlib.metrics import auc_ci, auc_difference_ci
    from pcamlib.train import load_model, train

    other = load_model(args.against) if args.against else None  # a bad path fails before training
    t0 = time.perf_counter()
    train_cache = load_patches(args.train, "train")
    valid_cache = load_patches(args.valid, "valid")
    t_pack = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = train(config, cache=train_cache, verbose=2)
    t_train = time.perf_counter() - t0

    model = load_model(result.run_dir)
    rows = {}
    for tta in (1, 8):
        t0 = time.perf_counter()
        metrics, probs = evaluate(model, valid_cache, tta=tta, progress=False)
        _, lo, hi = auc_ci(valid_cache.labels, probs)  # DeLong 95% CI
        rows[tta] = {**metrics, "auc_lo": lo, "auc_hi": hi, "seconds": time.perf_counter() - t0}
    paired = {}
    if other is not None:  # probs are this run's TTA×8 predictions
        _, other_probs = evaluate(other, valid_cache, tta=8, progress=False)
        diff, lo, hi, p = auc_difference_ci(valid_cache.labels, probs, other_probs)
        paired = {"against": args.against, "auc_minus_against": diff, "lo": lo, "hi": hi, "p": p}

    print(f"\nrecipe {args.recipe} ({keras.backend.backend()} backend, {os.cpu_count()} CPUs)")
    if args.set:
        print(f"settings changed: {args.set}")
    print(f"train: {len(train_cache)} patches from {args.train}")
    print(f"valid: {len(valid_cache)} patches from {args.valid}")
    print(f"pack (or reuse) caches: {t_pack:8.1f} s")
    print(f"train {len(result.history)} epochs:  {t_train:8.1f} s  ({t_train / 60:.1f} min)")
    print(
        f"{'':10}{'ROC AUC':>9}{'95% CI':>17}{'PR AUC':>9}{'accuracy':>10}{'bal.acc':>9}{'sens':>7}"
        f"{'spec':>7}{'ECE':>7}{'eval s':>8}"
    )
    for tta, m in rows.items():
        print(
            f"TTA x{tta:<4}{m['roc_auc']:9.4f}  [{m['auc_lo']:.4f}, {m['auc_hi']:.4f}]"
            f"{m['pr_auc']:9.4f}{m['accuracy']:10.4f}"
            f"{m['balanced_accuracy']:9.4f}{m['sensitivity']:7.3f}{m['specificity']:7.3f}"
            f"{m['ece']:7.3f}{m['seconds']:8.1f}"
        )
    if paired:
        print(
            f"TTA x8 AUC minus {args.against}'s: {paired['auc_minus_against']:+.4f}, 95% CI "
            f"[{paired['lo']:+.4f}, {paired['hi']:+.4f}], p = {paired['p']:.2g} (paired DeLong)"
        )
    summary = {
        "recipe": args.recipe,
        **({"set": json.loads(args.set)} if args.set else {}),
        "train_seconds": round(t_train, 1),
        "epochs": len(result.history),
        **{
            f"tta{t}": {k: round(v, 4) for k, v in m.items() if isinstance(v, float)}
            for t, m in rows.items()
        },
        **({"paired": paired} if paired else {}),
    }
    atomic_write_text(result.run_dir / "recipe_benchmark.json", json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
