"""Two models' valid AUCs as trained and with their BatchNorm statistics re-estimated.

    python benchmarks/bn_stats.py --train pcam-jpeg/data/train --valid pcam-jpeg/data/valid \\
        --models runs/gpu-crop64 runs/gpu-stem96

A BatchNormalization layer scores with moving averages of its training batches' means and
variances (momentum 0.99: a step moves them 1% of the way), so after a few hundred steps they
still hold part of their initial 0 and 1, and the model scores worse than its weights can. For
each model (a ``.keras`` file or a run directory's best model) this prints the TTA×8 ROC AUC on
--valid as trained, then sets every BatchNormalization's moving mean and variance to the
running mean over --batches training batches of 512 patches (the same batches for every
model, the model's augmentation on as in training; no weight changes) and scores TTA×1 and
TTA×8 again, each with its 95% DeLong interval; then the paired DeLong difference, second
model minus first, of both TTA×8 scores.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="the training patches (any layout)")
    parser.add_argument("--valid", required=True, help="labelled held-out data (other slides)")
    parser.add_argument("--models", nargs=2, required=True, help="two .keras files or run dirs")
    parser.add_argument("--batches", type=int, default=30, help="training batches of 512")
    return parser.parse_args(argv)


def reestimate_bn(model, images, batches: int, batch_size: int = 512, seed: int = 0) -> None:
    """Every BatchNormalization's moving mean/variance := the mean of ``batches`` batch stats."""
    import keras
    import numpy as np

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    rng = np.random.default_rng(seed)
    for k in range(batches):
        rows = np.sort(rng.choice(len(images), batch_size, replace=False))
        for layer in norms:  # batch k gets weight 1/(k+1): a running mean, the start forgotten
            layer.momentum = k / (k + 1)
        model(np.asarray(images[rows]), training=True)  # eager: momentum is read every call
    for layer in norms:
        layer.momentum = 0.99


def main() -> None:
    args = parse_args()
    from pcamlib.cache import load_patches
    from pcamlib.evaluate import evaluate
    from pcamlib.metrics import auc_ci, auc_difference_ci
    from pcamlib.train import load_model

    train = load_patches(args.train, "train")
    valid = load_patches(args.valid, "valid")
    probs: dict[str, list] = {"as trained": [], "BN re-estimated": []}

    def score(name: str, label: str, model, tta: int):
        metrics, p = evaluate(model, valid, tta=tta, progress=False)
        _, lo, hi = auc_ci(valid.labels, p)
        print(
            f"{name:40} {label:16} TTA x{tta}  ROC AUC {metrics['roc_auc']:.4f} "
            f"[{lo:.4f}, {hi:.4f}]  sens {metrics['sensitivity']:.3f} "
            f"spec {metrics['specificity']:.3f}  ECE {metrics['ece']:.3f}",
            flush=True,
        )
        return p

    for name in args.models:
        model = load_model(name)
        probs["as trained"].append(score(name, "as trained", model, 8))
        reestimate_bn(model, train.images, args.batches)
        score(name, "BN re-estimated", model, 1)
        probs["BN re-estimated"].append(score(name, "BN re-estimated", model, 8))
    first, second = args.models
    for label, (a, b) in probs.items():
        diff, lo, hi, p = auc_difference_ci(valid.labels, b, a)
        print(
            f"{label}: TTA x8 AUC of {second} minus {first}'s: {diff:+.4f}, 95% CI "
            f"[{lo:+.4f}, {hi:+.4f}], p = {p:.2g} (paired DeLong)"
        )


if __name__ == "__main__":
    main()
