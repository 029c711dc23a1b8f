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

import argparse
import dataclasses
import inspect
import json
import os
import re
import sys
from pathlib import Path

from .config import TTA_VIEWS, SettingError, TrainConfig, value_problem  # no Keras, no pandas
from .notebook import quiet_keras

# Before anything can import TensorFlow: keep its C++ info and warning lines out (errors show).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SPLITS = ("train", "valid", "test")  # sources.SPLITS, not imported: pandas would slow --help
# The ranges of the other subcommands' numbers: TrainConfig's (--batch-size, --workers), these.
RANGES = {f.name: f.metadata.get("allowed") for f in dataclasses.fields(TrainConfig)}
RANGES = {name: allowed for name, allowed in RANGES.items() if isinstance(allowed, str)}
RANGES |= {"operating_point": "> 0 and ≤ 1", "timeout": "> 0 and ≤ 86400",
           "poll_interval": "> 0 and ≤ 3600"}  # fmt: skip


def cli_value(value) -> str:
    """A value as the command line spells it: ``none``, ``yes``/``no``, ``1e-05``."""
    if value is None or isinstance(value, bool):
        return {None: "none", True: "yes", False: "no"}[value]
    return format(value, "g") if isinstance(value, float) else str(value)


def field_comments(cls) -> dict[str, str]:
    """Each field's trailing comment in the source of the dataclass ``cls``: its one text."""
    return dict(re.findall(r"^ +(\w+): \w[^#\n]*# *(.*)$", inspect.getsource(cls), re.M))


def _train_parser(sub, comments: dict[str, str]) -> None:
    """A flag per field of TrainConfig (model_kwargs is Python only), with its values."""
    p = sub.add_parser("train", help="train a model into a run directory (resumable)")
    p.description = "Every setting is checked before anything is written; unset ones come from "
    p.description += "--recipe, else TrainConfig's defaults."
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "model_kwargs"]
    spelled = {}  # per field with choices: "none" → None, "yes" → True, "8" → 8
    for f in fields:
        allowed, how = f.metadata.get("allowed"), {"help": comments[f.name]}
        if f.type == "bool":
            how["action"] = argparse.BooleanOptionalAction
        elif isinstance(allowed, tuple):
            spelled[f.name] = {cli_value(o): o for o in allowed}
            how["choices"] = list(spelled[f.name])
        elif allowed:  # and its range as value_problem words it: "an integer ≥ 1, or unset"
            how["type"] = int if f.type.startswith("int") else float
            how["help"] += f" ({value_problem('', allowed, f.type).removeprefix('must be ')})"
        else:  # a path or a name
            how["required"] = f.name in ("data", "out")
        p.add_argument("--" + f.name.replace("_", "-"), **how)
    p.set_defaults(func=cmd_train, _fields=[f.name for f in fields], _spelled=spelled)


def cmd_train(args) -> None:
    values = {name: getattr(args, name) for name in args._fields}
    values = {k: args._spelled.get(k, {}).get(v, v) for k, v in values.items() if v is not None}
    recipe = values.pop("recipe", None)  # both check every setting before anything is written
    config = TrainConfig.from_recipe(recipe, **values) if recipe else TrainConfig(**values)
    quiet_keras()
    from .train import train

    result = train(config)
    best = result.history["val_auc"].max() if "val_auc" in result.history else float("nan")
    summary = dict(run_dir=str(result.run_dir), epochs=len(result.history))
    summary.update(best_val_auc=round(float(best), 4), best_model=str(result.best_model_path))
    print(json.dumps(summary))


def _run_config(model: str) -> dict:
    """The shipped model's card, else the config.json of the run ``model`` is or is in, or {}."""
    if model == "pretrained":
        from .pretrained import card

        return card()
    paths = [Path(model) / "config.json", Path(model).parent / "config.json"]
    return next((json.loads(path.read_text()) for path in paths if path.is_file()), {})


def cmd_evaluate(args) -> None:
    quiet_keras()
    from .cache import load_patches
    from .evaluate import evaluate, scoring_rows
    from .train import load_model

    config = _run_config(args.model)
    # By default the HDF5 split a run trained on PCam's own splits never saw: test, else valid.
    split = args.split or ("test" if config.get("split") == "pcam" else "valid")
    cache = load_patches(args.data, split, cache_dir=args.cache_dir)
    # Default: the run's test rows (all rows of data it never saw, by pixels: names repeat).
    rows, scored = scoring_rows(cache, args.model, args.subset, include_train=args.include_train)
    tta = args.tta or config.get("tta", 1)  # else the run's (the shipped model's card's), else 1
    how = dict(tta=tta, batch_size=args.batch_size, operating_point=args.operating_point)
    metrics = evaluate(load_model(args.model), cache, rows, **how)[0] | scored
    rounded = {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}
    print(json.dumps(rounded, indent=1))


def cmd_predict(args) -> None:
    from . import submission

    submission.check_no_leak(args.model)  # before, not after, predicting a whole test set
    # A Kaggle submission must cover the whole test listing, not just what the cache holds.
    kaggle = submission.is_kaggle_test(args.data)
    expected = submission.expected_test_ids(args.data) if kaggle else None
    quiet_keras()
    from .cache import load_patches
    from .evaluate import predict_cache
    from .train import load_model

    cache = load_patches(args.data, "test", cache_dir=args.cache_dir)
    if expected is None:  # another layout (PCam HDF5, class folders, a cache): all of it
        expected = cache.ids
        if cache.meta.get("excluded"):
            why = f"its test cache left out {cache.meta['excluded']} unreadable item(s) (see "
            why += f"{cache.path / 'excluded.csv'}); a submission must cover every test id"
            raise SettingError("data", args.data, why)
    submission.missing_ids(expected, cache.ids, f"{args.data} (cache {cache.path})")
    tta = args.tta or _run_config(args.model).get("tta", 1)
    probs = predict_cache(load_model(args.model), cache, tta=tta, batch_size=args.batch_size)
    how = dict(expected_ids=expected, run=args.model)
    path = submission.write_submission(cache.ids, probs, args.out, **how)
    print(f"wrote {len(cache.ids)} tumour probabilities (tta={tta}) to {path}")


def cmd_check_submission(args) -> None:
    from .submission import check_submission, expected_test_ids

    label = check_submission(args.file, expected_test_ids(args.data))["label"]
    span = f"[{label.min():.4f}, {label.max():.4f}]"
    print(f"{args.file}: OK, {len(label)} rows, probabilities in {span}")


def cmd_pack(args) -> None:
    from .cache import PackedCache, pack

    on_error = "exclude" if args.exclude_bad else "raise"
    cache = pack(args.source, args.out, split=args.split, on_error=on_error, workers=args.workers)
    if args.verify:
        PackedCache.open(cache.path, verify="full")
    tumour = None if cache.labels is None else int((cache.labels == 1).sum())
    summary = dict(cache=str(cache.path), count=len(cache), tumour=tumour)
    print(json.dumps(summary | {"excluded": cache.meta.get("excluded", 0)}))


def cmd_download(args) -> None:
    from .kaggle import download_competition
    from .pcam import download_pcam

    if args.mirror and args.source != "pcam":
        raise SettingError("mirror", args.mirror, "is for --source pcam")
    how = dict(force=args.force) | ({"out": args.out} if args.out else {})  # else theirs
    if args.source == "pcam":
        path = download_pcam(**how, mirror=args.mirror)
    else:
        path = download_competition(**how)
    print(f"downloaded to {path}")


def cmd_submit(args) -> None:
    from .kaggle import submit_file

    how = dict(run=args.run, data=args.data, timeout=args.timeout, poll=args.poll_interval)
    submit_file(args.file, args.message, **how)


FLAG, REQUIRED = dict(action="store_true"), dict(required=True)
RUN = [  # evaluate's and predict's
    ("--model", "run directory, .keras file or 'pretrained'", REQUIRED),
    ("--data", None, REQUIRED),
    ("--tta", "default: the run's, else 1", dict(type=int, choices=TTA_VIEWS)),
    ("--batch-size", "default 256", dict(type=int, default=256)), ("--cache-dir", None, {}),
]  # fmt: skip
# Every subcommand but train: what runs it, its help, its arguments (name or flags, help,
# options). No help: TrainConfig's comment on the same name. A number with a range in RANGES
# or TrainConfig gets it in its help; main() checks it.
COMMANDS = {
    "evaluate": (cmd_evaluate, "metrics of a model on labelled data (JSON)", [*RUN,
        ("--split", "split of PCam HDF5 data (default: test for a run with --split pcam, "
         "else valid)", dict(choices=SPLITS)),
        ("--subset", "rows of the run's split.csv, by pixels (default test: all it never saw), "
         "or all", dict(choices=["test", "val", "train", "all"])),
        ("--include-train", "allow rows the run trained on (the JSON's train_rows counts them)",
         FLAG),
        ("--operating-point", "target sensitivity of op_*", dict(type=float, default=0.95))]),
    "predict": (cmd_predict, "tumour probabilities for a test set → submission CSV",
                [*RUN, ("--out", "submission CSV to write", REQUIRED)]),
    "check-submission": (cmd_check_submission, "validate a submission CSV", [("file", None, {}),
        ("--data", "dataset root, its test folder or its sample_submission.csv", REQUIRED)]),
    "pack": (cmd_pack, "decode a source once into a verified uint8 cache", [
        ("source", None, {}), ("--out", "the cache folder to write", REQUIRED),
        ("--split", "split of PCam HDF5 data; train on PCam's HDF5 layout: all three splits",
         dict(default="train", choices=SPLITS)),
        ("--exclude-bad", None, FLAG), ("--workers", "decoding threads", dict(type=int)),
        ("--verify", "hash every chunk after packing", FLAG)]),
    "download": (cmd_download, "the full data: the Kaggle competition, or PCam", [
        ("--source", "kaggle: the competition (Kaggle CLI, credentials); pcam: PCam's HDF5 from "
         "Zenodo", dict(default="kaggle", choices=["kaggle", "pcam"])),
        ("--out", "default data/full (kaggle), data/pcam (pcam)", {}),
        ("--mirror", "URL serving PCam's files and a SHA256SUMS, for Zenodo", {}),
        ("--force", "fetch again even if --out is complete", FLAG)]),
    "submit": (cmd_submit, "submit a CSV to Kaggle; print and record its scores", [
        ("file", None, {}), ("-m --message", "the submission's description", REQUIRED),
        ("--run", "run that made the file (default: as write_submission recorded)", {}),
        ("--data", "dataset root whose test ids the file covers (data/full)", {}),
        ("--timeout", "seconds to wait for the score", dict(type=float, default=600)),
        ("--poll-interval", "seconds between polls", dict(type=float, default=10))]),
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcam", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    comments = field_comments(TrainConfig)
    _train_parser(sub, comments)
    for command, (func, text, arguments) in COMMANDS.items():
        p = sub.add_parser(command, help=text)
        for names, text, options in arguments:
            dest = names.split()[-1].lstrip("-").replace("-", "_")
            text, bounds = text or comments.get(dest), RANGES.get(dest)
            p.add_argument(*names.split(), help=f"{text} ({bounds})" if bounds else text, **options)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:  # the numbers of other subcommands than train (TrainConfig checks train's)
        for name, bounds in RANGES.items() if args.command != "train" else ():
            value = getattr(args, name, None)
            kind = "int | None" if isinstance(value, int) else "float | None"
            if problem := value_problem(value, bounds, kind):
                raise SettingError(name, value, problem)
        args.func(args)
        return 0
    except (ValueError, FileNotFoundError, ImportError) as exc:  # SettingError, DataError too
        text = exc
        if isinstance(exc, SettingError):  # spelled as typed: --lr -1, not lr=-1
            text = f"--{exc.setting.replace('_', '-')} {cli_value(exc.value)}: {exc.allowed}"
        print(f"pcam {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
