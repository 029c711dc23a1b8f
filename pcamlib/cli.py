"""``pcam``: the command line over the same functions the notebooks call.

pcam pack SOURCE --out CACHE
pcam train --data DIR --model cnn1 --epochs 5 --out runs/cnn1      (or --recipe pcam-cpu)
pcam evaluate --model runs/cnn1 --data DIR --tta 8                 (JSON on stdout)
pcam predict --model runs/cnn1 --data DIR --tta 8 --out submission.csv
pcam check-submission submission.csv --data DIR
pcam download --out data/full
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _train_parser(sub) -> None:
    from .config import TrainConfig
    from .devices import STRATEGIES
    from .models import MODEL_NAMES

    p = sub.add_parser("train", help="train a model into a run directory (resumable)")
    p.add_argument("--data", required=True, help="Kaggle/HDF5/class-folder dir, or a cache")
    p.add_argument("--out", required=True, help="run directory (rerun to resume)")
    p.add_argument("--recipe", help="named recipe (see pcamlib.recipes); explicit flags win")
    p.add_argument("--model", choices=MODEL_NAMES)
    p.add_argument("--epochs", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--weights", choices=["imagenet", "none"])
    p.add_argument(
        "--trainable",
        choices=["yes", "no"],
        help="backbone trainable (default: "
        "frozen with imagenet weights, trained from scratch without)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random dihedral views",
    )
    p.add_argument("--shift", type=int, help="random shifts of up to N pixels")
    p.add_argument("--color-jitter", type=float, help="colour jitter strength (e.g. 0.1)")
    p.add_argument("--val-limit", type=int, help="validate on at most N (balanced) rows")
    p.add_argument("--workers", type=int, help="threads preparing batches (default 1)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["constant", "cosine", "onecycle"])
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE")
    p.add_argument("--mixed-precision", choices=["auto", "on", "off", "bfloat16", "float16"])
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--tensorboard", action="store_true", default=None)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--split", choices=["stratified", "slide"])
    p.add_argument("--groups-csv", help="patch→slide csv (id,wsi) for --split slide")
    p.add_argument("--cache-dir")
    p.add_argument(
        "--exclude-bad",
        action="store_true",
        default=None,
        help="leave out unreadable/unlabelled items (listed in excluded.csv)",
    )
    p.set_defaults(func=cmd_train, _config_fields={f.name for f in dataclasses.fields(TrainConfig)})


def cmd_train(args) -> int:
    from .config import TrainConfig
    from .recipes import apply_recipe
    from .train import train

    values = {k: v for k, v in vars(args).items() if k in args._config_fields and v is not None}
    if values.get("weights") == "none":
        values["weights"] = None
    if "trainable" in values:
        values["trainable"] = values["trainable"] == "yes"
    config = TrainConfig(**values)
    config = apply_recipe(config, explicit=set(values) - {"recipe", "data", "out"})
    result = train(config)
    best = result.history["val_auc"].max() if "val_auc" in result.history else float("nan")
    print(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "epochs": len(result.history),
                "best_val_auc": round(float(best), 4),
                "best_model": str(result.best_model_path),
            }
        )
    )
    return 0


def _model_and_tta(args):
    from .train import load_model

    model = load_model(args.model)
    tta = args.tta
    if tta is None:
        config = Path(args.model) / "config.json"
        tta = json.loads(config.read_text()).get("tta", 1) if config.is_file() else 1
    return model, tta


def cmd_evaluate(args) -> int:
    from .cache import load_patches
    from .evaluate import evaluate, subset_rows

    cache = load_patches(args.data, args.split, cache_dir=args.cache_dir)
    rows = subset_rows(cache, args.model if Path(args.model).is_dir() else None, args.subset)
    model, tta = _model_and_tta(args)
    metrics, _ = evaluate(
        model,
        cache,
        rows,
        tta=tta,
        batch_size=args.batch_size,
        operating_point=args.operating_point,
    )
    print(
        json.dumps(
            {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}, indent=1
        )
    )
    return 0


def cmd_predict(args) -> int:
    from .cache import load_patches
    from .evaluate import predict_cache
    from .submission import write_submission

    cache = load_patches(args.data, "test", cache_dir=args.cache_dir)
    model, tta = _model_and_tta(args)
    probs = predict_cache(model, cache, tta=tta, batch_size=args.batch_size)
    path = write_submission(cache.ids, probs, args.out, expected_ids=cache.ids)
    print(f"wrote {len(cache.ids)} tumour probabilities (tta={tta}) to {path}")
    return 0


def cmd_check_submission(args) -> int:
    from .submission import check_submission, expected_test_ids

    frame = check_submission(args.file, expected_test_ids(args.data))
    print(
        f"{args.file}: OK, {len(frame)} rows, probabilities in "
        f"[{frame['label'].min():.4f}, {frame['label'].max():.4f}]"
    )
    return 0


def cmd_pack(args) -> int:
    from .cache import PackedCache, pack

    cache = pack(
        args.source,
        args.out,
        split=args.split,
        on_error="exclude" if args.exclude_bad else "raise",
        workers=args.workers,
    )
    if args.verify:
        PackedCache.open(cache.path, verify="full")
    labels = cache.labels
    summary = {
        "cache": str(cache.path),
        "count": len(cache),
        "tumour": None if labels is None else int((labels == 1).sum()),
        "excluded": cache.meta.get("excluded", 0),
    }
    print(json.dumps(summary))
    return 0


def cmd_download(args) -> int:
    from .download import download_competition

    print(f"downloaded to {download_competition(args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcam", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)

    for name, func, help_text in (
        ("evaluate", cmd_evaluate, "metrics of a model on labelled data (JSON)"),
        ("predict", cmd_predict, "tumour probabilities for a test set → submission CSV"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--model", required=True, help="run directory (best.keras) or .keras file")
        p.add_argument("--data", required=True)
        p.add_argument(
            "--tta",
            type=int,
            choices=[1, 8],
            help="1, or 8 dihedral views (default: the run's recipe setting, else 1)",
        )
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--cache-dir")
        p.set_defaults(func=func)
        if name == "evaluate":
            p.add_argument("--split", default="valid", help="split for HDF5/TFDS sources")
            p.add_argument(
                "--subset",
                choices=["all", "val"],
                default="all",
                help="'val': only the run's own validation ids (from split.csv)",
            )
            p.add_argument(
                "--operating-point",
                type=float,
                default=0.95,
                help="target sensitivity for the op_* metrics",
            )
        else:
            p.add_argument("--out", required=True, help="submission CSV to write")

    p = sub.add_parser("check-submission", help="validate a submission CSV")
    p.add_argument("file")
    p.add_argument("--data", required=True, help="sample_submission.csv or a test dir of .tif")
    p.set_defaults(func=cmd_check_submission)

    p = sub.add_parser("pack", help="decode a source once into a verified uint8 cache")
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--exclude-bad", action="store_true")
    p.add_argument("--workers", type=int)
    p.add_argument("--verify", action="store_true", help="hash every chunk after packing")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("download", help="download the full Kaggle competition data")
    p.add_argument("--out", default="data/full")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .sources import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ValueError, FileNotFoundError, ImportError) as exc:
        print(f"pcam {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
