"""``pcam``: the command line over the same functions the notebooks call.

pcam pack SOURCE --out CACHE
pcam train --data DIR --model cnn1 --epochs 5 --out runs/cnn1      (or --recipe pcam-cpu)
pcam evaluate --model runs/cnn1 --data DIR --tta 8                 (JSON on stdout)
pcam predict --model runs/cnn1 --data DIR --tta 8 --out submission.csv
pcam check-submission submission.csv --data DIR
pcam train --help                                                  (every setting's values)
pcam download --out data/full
"""

from __future__ import annotations

import os

# Before anything can import TensorFlow: keep its C++ info and warning lines out (errors show).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from . import limits  # noqa: E402  (light: no Keras, so --help and errors answer at once)
from .quiet import quiet_keras  # noqa: E402
from .recipes import RECIPES  # noqa: E402

RECIPE_NAMES = tuple(RECIPES)


def _help(setting: str, text: str = "", rules=limits.TRAIN_RULES) -> str:
    """A flag's help: what it does, then the values it takes (from the one table)."""
    values = limits.allowed(setting, rules)
    return f"{text} ({values})" if text else values


def _train_parser(sub) -> None:
    from .config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model into a run directory (resumable)",
        description="Every setting is checked before anything is written; "
        "unset ones come from --recipe, else TrainConfig's defaults.",
    )
    p.add_argument("--data", required=True, help="dataset root (any layout) or a packed cache")
    p.add_argument("--out", required=True, help="run directory (rerun to resume)")
    p.add_argument(
        "--recipe", help=f"named recipe, one of {', '.join(RECIPE_NAMES)}; explicit flags win"
    )
    p.add_argument("--model", choices=limits.MODEL_NAMES)
    p.add_argument("--epochs", type=int, help=_help("epochs"))
    p.add_argument(
        "--image-size",
        type=int,
        help="model input side in pixels: cnn1/cnn2 16-512 (default 64), backbones 32-512 "
        "(default 96), pcamnet a centre crop of 2^(stages-1)-96 (default 64)",
    )
    p.add_argument("--batch-size", type=int, help=_help("batch_size", "per replica"))
    p.add_argument("--lr", type=float, help=_help("lr", "peak learning rate"))
    p.add_argument("--val-fraction", type=float, help=_help("val_fraction"))
    p.add_argument(
        "--test-fraction",
        type=float,
        help=_help(
            "test_fraction",
            "share held out as the protocol's test rows, the same for every run on this data; "
            "0 when the test set is separate data",
        ),
    )
    p.add_argument(
        "--weights",
        choices=["imagenet", "none"],
        help="imagenet: pretrained backbone (vgg16, vgg19, resnet50; refused if it cannot be "
        "downloaded or found in ~/.keras/models); none: from scratch",
    )
    p.add_argument(
        "--trainable",
        choices=["yes", "no"],
        help="backbone trainable (default: "
        "frozen with imagenet weights, trained from scratch without)",
    )
    p.add_argument("--seed", type=int, help=_help("seed"))
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random dihedral views",
    )
    p.add_argument("--shift", type=int, help=_help("shift", "random shifts of up to N pixels"))
    p.add_argument("--color-jitter", type=float, help=_help("color_jitter", "colour jitter"))
    p.add_argument("--hed-jitter", type=float, help=_help("hed_jitter", "HED stain jitter σ"))
    p.add_argument("--augment-on", choices=["host", "model"], help="where augmentation runs")
    p.add_argument(
        "--stain-norm", choices=["reinhard", "none"], help="stain normalisation in the model"
    )
    p.add_argument("--val-limit", type=int, help=_help("val_limit", "validate on ≤ N rows"))
    p.add_argument("--workers", type=int, help=_help("workers", "threads preparing batches"))
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    p.add_argument("--weight-decay", type=float, help=_help("weight_decay", "adamw only"))
    p.add_argument("--schedule", choices=["constant", "cosine", "onecycle"])
    p.add_argument(
        "--warmup-epochs", type=float, help=_help("warmup_epochs", "≤ --epochs; fractions allowed")
    )
    p.add_argument("--label-smoothing", type=float, help=_help("label_smoothing"))
    p.add_argument(
        "--early-stopping",
        type=int,
        metavar="PATIENCE",
        help=_help("early_stopping", "epochs without a val-AUC gain"),
    )
    p.add_argument("--mixed-precision", choices=limits.PRECISION_MODES)
    p.add_argument("--strategy", choices=limits.STRATEGIES)
    p.add_argument("--tensorboard", action="store_true", default=None)
    p.add_argument(
        "--steps-per-epoch", type=int, help=_help("steps_per_epoch", "cap on batches per epoch")
    )
    p.add_argument("--split", choices=["stratified", "slide"])
    p.add_argument("--groups-csv", help="patch→slide csv (id,wsi); only with --split slide")
    p.add_argument("--tta", type=int, choices=[1, 8], help="views evaluate/predict use by default")
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

    values = {k: v for k, v in vars(args).items() if k in args._config_fields and v is not None}
    for name in ("weights", "stain_norm"):
        if values.get(name) == "none":
            values[name] = None
    if "trainable" in values:
        values["trainable"] = values["trainable"] == "yes"
    config = TrainConfig(**values)  # applies the recipe and checks every setting
    quiet_keras()
    from .train import train

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
    quiet_keras()
    from .train import load_model

    model = load_model(args.model)
    tta = args.tta
    if tta is None:
        config = Path(args.model) / "config.json"
        tta = json.loads(config.read_text()).get("tta", 1) if config.is_file() else 1
    return model, tta


def cmd_evaluate(args) -> int:
    limits.check_values(
        {"batch_size": args.batch_size, "operating_point": args.operating_point, "tta": args.tta}
    )
    quiet_keras()
    from .cache import load_patches
    from .evaluate import evaluate, scoring_rows

    cache = load_patches(args.data, args.split, cache_dir=args.cache_dir)
    # Default: the run's held-out test rows (all rows of data it never saw); training rows
    # only with --include-train, and the JSON then counts them.
    rows, scored = scoring_rows(cache, args.model, args.subset, include_train=args.include_train)
    model, tta = _model_and_tta(args)
    metrics, _ = evaluate(
        model,
        cache,
        rows,
        tta=tta,
        batch_size=args.batch_size,
        operating_point=args.operating_point,
    )
    metrics.update(scored)
    print(
        json.dumps(
            {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}, indent=1
        )
    )
    return 0


def cmd_predict(args) -> int:
    limits.check_values({"batch_size": args.batch_size, "tta": args.tta})
    from .submission import expected_test_ids, is_kaggle_test, missing_ids, write_submission

    # A Kaggle submission must cover the whole test listing, not just what the cache holds.
    expected = expected_test_ids(args.data) if is_kaggle_test(args.data) else None
    quiet_keras()
    from .cache import load_patches
    from .evaluate import predict_cache

    cache = load_patches(args.data, "test", cache_dir=args.cache_dir)
    if expected is None:  # another layout (PCam HDF5, class folders, a cache): all of it
        expected = cache.ids
        if cache.meta.get("excluded"):
            raise limits.SettingError(
                "data",
                args.data,
                f"its test cache left out {cache.meta['excluded']} unreadable item(s) "
                f"(see {cache.path / 'excluded.csv'}); a submission must cover every test id",
            )
    missing_ids(expected, cache.ids, f"{args.data} (cache {cache.path})")
    model, tta = _model_and_tta(args)
    probs = predict_cache(model, cache, tta=tta, batch_size=args.batch_size)
    path = write_submission(cache.ids, probs, args.out, expected_ids=expected)
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
    limits.check_values({"workers": args.workers})
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
        p.add_argument("--data", required=True, help="dataset root (any layout) or a packed cache")
        p.add_argument(
            "--tta",
            type=int,
            choices=[1, 8],
            help="1, or 8 dihedral views (default: the run's recipe setting, else 1)",
        )
        p.add_argument(
            "--batch-size",
            type=int,
            default=256,
            help=_help("batch_size", "default 256", limits.RUN_RULES),
        )
        p.add_argument("--cache-dir")
        p.set_defaults(func=func)
        if name == "evaluate":
            p.add_argument(
                "--split",
                default="valid",
                choices=["train", "valid", "test"],
                help="split for HDF5/TFDS sources",
            )
            p.add_argument(
                "--subset",
                choices=["test", "val", "train", "all"],
                help="rows of a run's split.csv: 'test' (default; every row of data the run "
                "never saw), 'val' (chose best.keras), 'train', or 'all' rows of --data",
            )
            p.add_argument(
                "--include-train",
                action="store_true",
                help="allow rows the run trained on (the JSON's train_rows counts them)",
            )
            p.add_argument(
                "--operating-point",
                type=float,
                default=0.95,
                help=_help(
                    "operating_point", "target sensitivity for the op_* metrics", limits.RUN_RULES
                ),
            )
        else:
            p.add_argument("--out", required=True, help="submission CSV to write")

    p = sub.add_parser("check-submission", help="validate a submission CSV")
    p.add_argument("file")
    p.add_argument(
        "--data",
        required=True,
        help="dataset root (its sample_submission.csv, else its test/ listing), "
        "or the test folder or sample_submission.csv itself",
    )
    p.set_defaults(func=cmd_check_submission)

    p = sub.add_parser("pack", help="decode a source once into a verified uint8 cache")
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train", choices=["train", "valid", "test"])
    p.add_argument("--exclude-bad", action="store_true")
    p.add_argument(
        "--workers", type=int, help=_help("workers", "decoding threads", limits.RUN_RULES)
    )
    p.add_argument("--verify", action="store_true", help="hash every chunk after packing")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("download", help="download the full Kaggle competition data")
    p.add_argument("--out", default="data/full")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except limits.SettingError as exc:  # spelled as typed: --lr, not lr
        print(f"pcam {args.command}: error: {exc.render('cli')}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, ImportError) as exc:  # DataError is a ValueError
        print(f"pcam {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
