"""Fine-tuning the shipped model against training the same model from scratch, same steps.

    python benchmarks/finetune.py --data data/sample --out runs/finetune

Trains the ``pcam-cpu`` recipe twice on ``--data``'s protocol (the leaderboard's split): once
from ``init="pretrained"`` and once from random weights, for the same epochs and steps, then
scores both, and the shipped model as it is, on the protocol's test rows without the patches
the shipped model trained on (TTA×8, each ROC AUC with its 95% DeLong interval), and prints
the paired DeLong difference of each against the fine-tuned run. ``--lr`` overrides the
recipe's peak learning rate for both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset root (any labelled layout)")
    parser.add_argument("--out", required=True, help="folder for the two run directories")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--lr", type=float, help="override the recipe's peak learning rate")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    from pcamlib.cache import atomic_write_text, load_patches
    from pcamlib.config import TrainConfig
    from pcamlib.evaluate import predict_cache, subset_rows
    from pcamlib.metrics import auc_ci, auc_difference_ci
    from pcamlib.pretrained import pretrained_run
    from pcamlib.train import load_model, train

    cache = load_patches(args.data, "train", progress=False)
    given = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    runs, seconds = {}, {}
    for name, init in (("finetuned", "pretrained"), ("scratch", None)):
        config = TrainConfig.from_recipe(
            "pcam-cpu", init=init, data=args.data, out=f"{args.out}/{name}", **given
        )
        start = time.perf_counter()
        runs[name] = train(config, cache=cache, verbose=0).run_dir
        seconds[name] = time.perf_counter() - start
    runs["shipped"] = pretrained_run(f"{args.out}/shipped", cache)
    test = subset_rows(cache, runs["finetuned"], "test")  # without the shipped model's twins
    y = cache.labels[test]
    probs = {
        n: predict_cache(load_model(r), cache, test, tta=8, progress=False) for n, r in runs.items()
    }
    print(
        f"{len(test)} test rows of {args.data}; {json.dumps(given) if given else 'recipe settings'}"
    )
    summary = {"test_rows": len(test), **given}
    for name, p in probs.items():
        auc, lo, hi = auc_ci(y, p)
        line = f"{name:>10}: test AUC (TTA×8) {auc:.4f} [{lo:.4f}, {hi:.4f}]"
        summary[name] = {"auc": auc, "lo": lo, "hi": hi, "train_s": seconds.get(name)}
        if name != "finetuned":
            d, dlo, dhi, pval = auc_difference_ci(y, probs["finetuned"], p)
            line += f"; finetuned minus {name}: {d:+.4f} [{dlo:+.4f}, {dhi:+.4f}], p = {pval:.2g}"
            summary[name]["finetuned_minus"] = {"diff": d, "lo": dlo, "hi": dhi, "p": pval}
        if name in seconds:
            line += f"; trained in {seconds[name]:.0f} s"
        print(line)
    atomic_write_text(f"{args.out}/finetune.json", json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
