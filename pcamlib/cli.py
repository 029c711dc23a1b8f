"""``pcam``: the command line over the same functions the notebooks call.

pcam pack SOURCE --out CACHE
pcam train --data DIR --model cnn1 --epochs 5 --out runs/cnn1      (or --recipe pcam-cpu)
pcam evaluate --model runs/cnn1 --data DIR --tta 8                 (JSON on stdout)
pcam predict --model runs/cnn1 --data DIR --tta 8 --out submission.csv
pcam check-submission submission.csv --data DIR
pcam train --help                                                  (every setting's values)
pcam download --out data/full                                      (or --source pcam)
pcam submit submission.csv --message "…"                           (Kaggle scores → the run)
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

from .config import RECIPES, TTA_VIEWS, SettingError, range_problem  # noqa: E402  (no Keras)
from .notebook import quiet_keras  # noqa: E402

SPLITS = ("train", "valid", "test")  # sources.SPLITS, not imported: pandas would slow --help
# pcam train's help where a flag's name and values do not say it all (docs/cli.md: the rest).
HELP = {
    "data": "dataset root (any layout) or a packed cache",
    "out": "run directory (rerun to resume)",
    "batch_size": "per replica",
    "lr": "peak learning rate (× replicas)",
    "image_size": "model input side (per model; see docs/cli.md)",
    "test_fraction": "held out, the same rows every run; 0: separate test data",
    "weights": "imagenet: pretrained backbone; none: from scratch",
    "trainable": "backbone trainable (default: not with imagenet weights)",
    "augment": "random dihedral views",
    "shift": "random shifts of up to N pixels",
    "hed_jitter": "HED stain jitter σ",
    "augment_on": "host: numpy while batching; model: first layers, on the accelerator",
    "early_stopping": "patience: epochs without a val-AUC gain",
    "steps_per_epoch": "cap on batches per epoch",
    "val_limit": "validate on a class-balanced subset of N rows",
    "workers": "threads preparing batches",
    "split": "stratified; slide (groups-csv or HDF5 meta); pcam: PCam's own splits "
    "(default on PCam's HDF5 layout or a cache of it)",
    "groups_csv": "patch→slide csv (id,wsi) for split slide",
    "exclude_bad": "leave out unreadable items (listed in excluded.csv)",
    "recipe": f"named recipe, one of {', '.join(RECIPES)}; explicit settings win",
    "tta": "views evaluate/predict use by default",
    "init": "start weights: 'pretrained' (with recipe pcam-cpu), a run directory or .keras file",
}
# The ranges of the other subcommands' numbers (TrainConfig checks train's).
RUN_RANGES = {
    "batch_size": "≥ 1 and ≤ 65536",
    "operating_point": "> 0 and ≤ 1",
    "workers": "≥ 1 and ≤ 256",
    "timeout": "> 0 and ≤ 86400",
    "poll_interval": "> 0 and ≤ 3600",
}


def cli_value(value) -> str:
    """A value as the command line spells it: ``none``, ``yes``/``no``, ``1e-05``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, "g") if isinstance(value, float) else str(value)


def _train_parser(sub) -> None:
    """One flag per TrainConfig field, with the field's type and values."""
    from .config import TrainConfig

    p = sub.add_parser("train", help="train a model into a run directory (resumable)")
    p.description = "Every setting is checked before anything is written; unset ones come "
    p.description += "from --recipe, else TrainConfig's defaults."
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "model_kwargs"]
    for f in fields:  # model_kwargs is Python only
        flag = "--" + f.name.replace("_", "-")
        allowed, text = f.metadata.get("allowed"), HELP.get(f.name)
        if isinstance(allowed, tuple):
            p.add_argument(flag, choices=[cli_value(o) for o in allowed], help=text)
        elif allowed:
            integer = f.type.startswith("int")
            what = f"{'an integer' if integer else 'a number'} {allowed}"
            p.add_argument(flag, type=int if integer else float, help=f"{text or ''} ({what})")
        elif f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        else:  # a path or a name
            p.add_argument(flag, required=f.name in ("data", "out"), help=text)
    p.set_defaults(func=cmd_train, _fields=fields)


def cmd_train(args) -> int:
    from .config import TrainConfig

    values = {f.name: getattr(args, f.name) for f in args._fields}
    values = {name: value for name, value in values.items() if value is not None}
    for f in args._fields:  # "none" → None, "yes" → True, "8" → 8
        if isinstance(f.metadata.get("allowed"), tuple) and f.name in values:
            values[f.name] = {cli_value(o): o for o in f.metadata["allowed"]}[values[f.name]]
    recipe = values.pop("recipe", None)  # both check every setting before anything is written
    config = TrainConfig.from_recipe(recipe, **values) if recipe else TrainConfig(**values)
    quiet_keras()
    from .train import train

    result = train(config)
    best = result.history["val_auc"].max() if "val_auc" in result.history else float("nan")
    summary = dict(run_dir=str(result.run_dir), epochs=len(result.history))
    summary.update(best_val_auc=round(float(best), 4), best_model=str(result.best_model_path))
    print(json.dumps(summary))
    return 0


def _model_and_tta(args):
    quiet_keras()
    from .train import load_model

    model = load_model(args.model)
    tta = args.tta
    if tta is None and args.model == "pretrained":
        from .pretrained import card

        tta = card()["tta"]
    if tta is None:
        config = Path(args.model) / "config.json"
        tta = json.loads(config.read_text()).get("tta", 1) if config.is_file() else 1
    return model, tta


def _evaluate_split(model: str) -> str:
    """The split --data's HDF5 files give by default: PCam's test split for a run trained on
    PCam's own splits (its test rows), else its valid split."""
    path = Path(model)
    config = next(
        (d / "config.json" for d in (path, path.parent) if (d / "config.json").is_file()), None
    )
    split = json.loads(config.read_text()).get("split") if config else None
    return "test" if split == "pcam" else "valid"


def cmd_evaluate(args) -> int:
    quiet_keras()
    from .cache import load_patches
    from .evaluate import evaluate, scoring_rows

    cache = load_patches(
        args.data, args.split or _evaluate_split(args.model), cache_dir=args.cache_dir
    )
    # Default: the run's held-out test rows (all rows of data it never saw); training rows
    # only with --include-train, and the JSON then counts them. Seen means the same pixels
    # (split.csv's content hashes), not the same file name: other datasets repeat names.
    rows, scored = scoring_rows(cache, args.model, args.subset, include_train=args.include_train)
    model, tta = _model_and_tta(args)
    point = args.operating_point
    metrics, _ = evaluate(
        model, cache, rows, tta=tta, batch_size=args.batch_size, operating_point=point
    )
    metrics.update(scored)
    rounded = {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}
    print(json.dumps(rounded, indent=1))
    return 0


def cmd_predict(args) -> int:
    from . import submission

    submission.check_no_leak(args.model)  # before, not after, predicting a whole test set
    # A Kaggle submission must cover the whole test listing, not just what the cache holds.
    expected = (
        submission.expected_test_ids(args.data) if submission.is_kaggle_test(args.data) else None
    )
    quiet_keras()
    from .cache import load_patches
    from .evaluate import predict_cache

    cache = load_patches(args.data, "test", cache_dir=args.cache_dir)
    if expected is None:  # another layout (PCam HDF5, class folders, a cache): all of it
        expected = cache.ids
        if cache.meta.get("excluded"):
            why = f"its test cache left out {cache.meta['excluded']} unreadable item(s) (see "
            why += f"{cache.path / 'excluded.csv'}); a submission must cover every test id"
            raise SettingError("data", args.data, why)
    submission.missing_ids(expected, cache.ids, f"{args.data} (cache {cache.path})")
    model, tta = _model_and_tta(args)
    probs = predict_cache(model, cache, tta=tta, batch_size=args.batch_size)
    path = submission.write_submission(
        cache.ids, probs, args.out, expected_ids=expected, run=args.model
    )
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

    on_error = "exclude" if args.exclude_bad else "raise"
    cache = pack(args.source, args.out, split=args.split, on_error=on_error, workers=args.workers)
    if args.verify:
        PackedCache.open(cache.path, verify="full")
    tumour = None if cache.labels is None else int((cache.labels == 1).sum())
    excluded = cache.meta.get("excluded", 0)
    print(
        json.dumps(dict(cache=str(cache.path), count=len(cache), tumour=tumour, excluded=excluded))
    )
    return 0


def cmd_download(args) -> int:
    from .download import DEFAULT_OUT, download_pcam
    from .kaggle import download_competition

    out = args.out or DEFAULT_OUT[args.source]
    if args.source == "pcam":
        path = download_pcam(out, mirror=args.mirror, force=args.force)
    elif args.mirror:
        raise SettingError("mirror", args.mirror, "is for --source pcam")
    else:
        path = download_competition(out, force=args.force)
    print(f"downloaded to {path}")
    return 0


def cmd_submit(args) -> int:
    from .kaggle import submit_file

    how = dict(run=args.run, data=args.data, timeout=args.timeout, poll=args.poll_interval)
    submit_file(args.file, args.message, **how)
    return 0


def _number(p, flag: str, kind: type, text: str, **kwargs) -> None:
    """A numeric flag whose help ends in its range (RUN_RANGES)."""
    bounds = RUN_RANGES[flag.lstrip("-").replace("-", "_")]
    p.add_argument(flag, type=kind, help=f"{text} ({bounds})", **kwargs)


def _run_parsers(sub) -> None:
    """evaluate and predict: a model on data."""
    evaluate = sub.add_parser("evaluate", help="metrics of a model on labelled data (JSON)")
    predict = sub.add_parser("predict", help="tumour probabilities for a test set → submission CSV")
    for p, func in ((evaluate, cmd_evaluate), (predict, cmd_predict)):
        p.add_argument("--model", required=True, help="run directory, .keras file or 'pretrained'")
        p.add_argument("--data", required=True, help="dataset root (any layout) or a packed cache")
        p.add_argument("--tta", type=int, choices=TTA_VIEWS, help="default: the run's, else 1")
        _number(p, "--batch-size", int, "default 256", default=256)
        p.add_argument("--cache-dir")
        p.set_defaults(func=func)
    text = "split for HDF5/TFDS sources (default: test for a run with --split pcam, else valid)"
    evaluate.add_argument("--split", choices=SPLITS, help=text)
    text = "rows of the run's split.csv, by pixels (default test: all it never saw), or all"
    evaluate.add_argument("--subset", choices=["test", "val", "train", "all"], help=text)
    text = "allow rows the run trained on (the JSON's train_rows counts them)"
    evaluate.add_argument("--include-train", action="store_true", help=text)
    _number(evaluate, "--operating-point", float, "target sensitivity of op_*", default=0.95)
    predict.add_argument("--out", required=True, help="submission CSV to write")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcam", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _run_parsers(sub)

    p = sub.add_parser("check-submission", help="validate a submission CSV")
    p.add_argument("file")
    text = "dataset root, its test folder or its sample_submission.csv"
    p.add_argument("--data", required=True, help=text)
    p.set_defaults(func=cmd_check_submission)

    p = sub.add_parser("pack", help="decode a source once into a verified uint8 cache")
    p.add_argument("source")
    p.add_argument("--out", required=True)
    text = "split for HDF5/TFDS sources; train on PCam's HDF5 layout: all three splits"
    p.add_argument("--split", default="train", choices=SPLITS, help=text)
    p.add_argument("--exclude-bad", action="store_true")
    _number(p, "--workers", int, "decoding threads")
    p.add_argument("--verify", action="store_true", help="hash every chunk after packing")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("download", help="the full data: the Kaggle competition, or PCam")
    text = "kaggle: the competition (Kaggle CLI, credentials); pcam: PCam's HDF5 from Zenodo"
    p.add_argument("--source", default="kaggle", choices=["kaggle", "pcam"], help=text)
    p.add_argument("--out", help="default data/full (kaggle), data/pcam (pcam)")
    p.add_argument("--mirror", help="URL serving PCam's files and a SHA256SUMS, for Zenodo")
    p.add_argument("--force", action="store_true", help="fetch again even if --out is complete")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("submit", help="submit a CSV to Kaggle; print and record its scores")
    p.add_argument("file")
    p.add_argument("-m", "--message", required=True, help="the submission's description")
    p.add_argument("--run", help="run that made the file (default: as write_submission recorded)")
    p.add_argument("--data", help="dataset root whose test ids the file covers (data/full)")
    _number(p, "--timeout", float, "seconds to wait for the score", default=600)
    _number(p, "--poll-interval", float, "seconds between polls", default=10)
    p.set_defaults(func=cmd_submit)
    return parser


def _check_numbers(args) -> None:
    """Refuse a number outside its RUN_RANGES (train's settings: TrainConfig checks them)."""
    for name, bounds in RUN_RANGES.items():
        value = getattr(args, name, None)
        problem = range_problem(value, bounds, isinstance(value, int), optional=True)
        if problem:
            raise SettingError(name, value, problem)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "train":
            _check_numbers(args)
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:  # SettingError, DataError too
        text = exc
        if isinstance(exc, SettingError):  # spelled as typed: --lr -1, not lr=-1
            text = f"--{exc.setting.replace('_', '-')} {cli_value(exc.value)}: {exc.allowed}"
        print(f"pcam {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
