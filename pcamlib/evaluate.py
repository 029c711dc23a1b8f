"""Glue between models, packed data and metrics: evaluate a model, predict a test set, rank runs.

Rows come from a run's ``split.csv`` (:mod:`pcamlib.stream`): runs are reported on the
protocol's test rows, the same for every run on the same data; validation rows chose each run's
``best.keras`` and its threshold; a model is never scored on the patches it trained on unless
asked to (``include_train``), and then the result says how many there were.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import PackedCache, atomic_write_text
from .metrics import auc_ci, binary_metrics, predict_proba, youden_threshold
from .pretrained import is_pretrained, seen_ids
from .stream import SUBSETS, fingerprint, read_split


class _Rows:
    """A lazy row view (``images[rows]``) so predict_proba streams from the memmap in batches."""

    def __init__(self, images: np.ndarray, rows: np.ndarray):
        self.images, self.rows = images, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: slice) -> np.ndarray:
        return np.asarray(self.images[self.rows[item]])


def _isin(ids, wanted) -> np.ndarray:
    """Hashed membership: a boolean mask of ``ids`` that are in ``wanted``."""
    return pd.Series(ids, dtype=object).isin(set(wanted)).to_numpy()


def _keys(cache: PackedCache, split: pd.DataFrame) -> tuple[list[str], pd.Series, str]:
    """What makes a row of ``cache`` a row of ``split``: its pixels (content hash), or its id
    for a split.csv written before content hashes (then another dataset's names can collide)."""
    if "content" in split:
        return cache.content, split["content"], "content"
    return cache.ids, split["id"], "id"


def subset_rows(
    cache: PackedCache, run_dir: str | os.PathLike | None, subset: str, limit: int | None = None
) -> np.ndarray:
    """Row indices of ``cache`` to score: 'all', or the run's 'train', 'val' or 'test' rows.

    A row is the run's when its pixels are (split.csv's content hashes), whatever its name;
    a split.csv without hashes (older runs) is matched by id. A patch stored twice is both
    rows. ``limit`` keeps a class-balanced subset of that many rows (smoke runs); being the
    first rows of each class, it keeps the same rows for every run with the same test rows.
    """
    if subset == "all":
        rows = np.arange(len(cache))
    elif subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, all; got {subset!r}")
    elif run_dir is None or not (Path(run_dir) / "split.csv").is_file():
        raise ValueError(f"subset={subset!r} needs a run directory with split.csv as the model")
    else:
        split = read_split(run_dir)
        keys, split_keys, by = _keys(cache, split)
        wanted = split_keys[split["subset"] == subset]
        split_csv = Path(run_dir) / "split.csv"
        if wanted.empty:
            hint = (
                " (a run made before the test protocol, or with test_fraction=0): retrain it, or "
                "score its validation rows (subset 'val', which also chose its best.keras)"
                if subset == "test"
                else ""
            )
            raise ValueError(f"{split_csv} has no {subset!r} rows{hint}")
        rows = np.flatnonzero(_isin(keys, wanted))
        missing = int((~_isin(wanted, keys)).sum())
        if missing:
            raise ValueError(
                f"{split_csv}: {missing} of its {len(wanted)} {subset} patches are not in "
                f"{cache.path} (compared by {by}); evaluate on the data the run was trained "
                "on, or score subset 'all'"
            )
    if limit is None or limit >= len(rows) or cache.labels is None:
        return rows
    per_class = [rows[cache.labels[rows] == c][: limit // 2] for c in (0, 1)]
    return np.sort(np.concatenate(per_class))


def scoring_rows(
    cache: PackedCache,
    model: str | os.PathLike,
    subset: str | None = None,
    *,
    include_train: bool = False,
) -> tuple[np.ndarray, dict]:
    """The rows of ``cache`` to score ``model`` (a run directory or a .keras file) on, and what.

    ``subset=None`` means the run's held-out test rows, or every row when the data holds none
    of the run's patches (another dataset). Rows that include patches the run trained on are
    refused unless ``include_train``. A patch is the run's by its pixels (split.csv's content
    hashes): the same pixels under another name were seen, another patch under a seen name
    was not. Only a split.csv without hashes (runs made before them) is matched by id. The
    dict gives ``subset``, ``train_rows`` (how many of the rows the model trained on; None
    when ``model`` is a bare .keras file with no split.csv) and ``unseen_data``.
    ``"pretrained"`` (the shipped model) is scored on every row but those it trained on,
    and ``seen_left_out`` says how many.
    """
    if is_pretrained(model):
        return _pretrained_rows(cache, subset, include_train)
    model = Path(model)
    run_dir = next((d for d in (model, model.parent) if (d / "split.csv").is_file()), None)
    if run_dir is None:
        if subset != "all":
            raise ValueError(
                f"{model} has no split.csv beside it, so which rows it trained on is unknown; "
                "pass subset 'all' to score every row anyway"
            )
        return np.arange(len(cache)), {"subset": "all", "train_rows": None}
    split = read_split(run_dir)
    keys, split_keys, by = _keys(cache, split)
    unseen = not _isin(keys, split_keys).any()
    if subset is None:
        subset = "all" if unseen else "test"
    rows = subset_rows(cache, run_dir, subset)
    trained = split_keys[split["subset"] == "train"]
    n_train = int(_isin(keys, trained)[rows].sum())
    if n_train and not include_train:
        raise ValueError(
            f"subset {subset!r} of {cache.path} holds {n_train} of the {len(trained)} rows "
            f"{run_dir} trained on (its split.csv, matched by {by}); pass include_train "
            "(--include-train) to score them anyway, or leave subset unset for the held-out "
            "test rows"
        )
    return rows, {"subset": subset, "train_rows": n_train, "unseen_data": unseen}


def _pretrained_rows(cache: PackedCache, subset: str | None, include_train: bool):
    """Every row of ``cache`` but those the shipped model trained on (:func:`seen_ids`)."""
    if subset not in (None, "all"):
        raise ValueError(
            f"subset {subset!r} needs a run's split.csv; the pretrained model is scored on all "
            "rows of the data but those it trained on (leave subset unset)"
        )
    seen = seen_ids(cache)
    if seen is None:
        raise ValueError(
            f"{cache.path}: which of these patches the pretrained model trained on is unknown "
            "(Kaggle training data holds twins of PCam's train split); score it on the "
            "sample, on Kaggle's test set or on PCam valid/test"
        )
    mask = _isin(cache.ids, seen)
    rows = np.arange(len(cache)) if include_train else np.flatnonzero(~mask)
    left_out = 0 if include_train else int(mask.sum())
    info = {"subset": "all", "train_rows": int(mask[rows].sum()), "seen_left_out": left_out}
    return rows, info


def predict_cache(
    model,
    cache: PackedCache,
    rows: np.ndarray | None = None,
    *,
    tta: int = 1,
    batch_size: int = 256,
    progress: bool = True,
    per_view: bool = False,
) -> np.ndarray:
    """Tumour probabilities for ``rows`` of a packed cache (all rows by default).

    Examples:
        >>> test = load_patches("data/sample", "test")
        >>> probs = predict_cache(load_model("pretrained"), test, tta=8)  # (29,) float32
    """
    rows = np.arange(len(cache)) if rows is None else np.asarray(rows)
    images = _Rows(cache.images, rows)
    return predict_proba(
        model, images, batch_size=batch_size, tta=tta, progress=progress, per_view=per_view
    )


def evaluate(
    model,
    cache: PackedCache,
    rows: np.ndarray | None = None,
    *,
    tta: int = 1,
    batch_size: int = 256,
    operating_point: float | None = 0.95,
    threshold: float = 0.5,
    progress: bool = True,
) -> tuple[dict, np.ndarray]:
    """Metrics (ROC/PR AUC; accuracy, sensitivity… at ``threshold``; see binary_metrics), probs."""
    if cache.labels is None:
        raise ValueError(f"{cache.path}: evaluation needs labelled data")
    rows = np.arange(len(cache)) if rows is None else np.asarray(rows)
    probs = predict_cache(model, cache, rows, tta=tta, batch_size=batch_size, progress=progress)
    metrics = binary_metrics(
        cache.labels[rows], probs, threshold=threshold, operating_point=operating_point
    )
    metrics["tta"] = tta
    return metrics, probs


def run_summary(run_dir: str | os.PathLike) -> dict:
    """Model name, best val AUC and epochs of a finished (or interrupted) run directory, or of
    the shipped model's file (not scored on this data: its card's numbers, on its own val rows)."""
    if is_pretrained(run_dir) and not Path(run_dir).is_dir():
        from .pretrained import NAME, card

        name, config = NAME, card()
        state = {"epoch": len(config["history"]), **config}
    else:
        run_dir = Path(run_dir)
        name = run_dir.name
        state = json.loads((run_dir / "state.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
    return {
        "run": name,
        "model": config["model"],
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_val_auc": state["best_val_auc"],
    }


def best_run(runs_dir: str | os.PathLike) -> Path:
    """The run under ``runs_dir`` with the highest VALIDATION AUC (ties: the first by name).

    Never the test rows: they are only reported (see :func:`results_table`).
    """
    runs = sorted(p.parent for p in Path(runs_dir).glob("*/state.json"))
    if not runs:
        raise FileNotFoundError(f"{runs_dir}: no training runs found (run notebooks 02/03 first)")
    return max(runs, key=lambda r: run_summary(r)["best_val_auc"])


def _training_facts(run_dir: Path) -> dict:
    """Model, weights, epochs, seconds and throughput of a run, from its files."""
    from .limits import BACKBONE_NAMES

    state = json.loads((run_dir / "state.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    history = pd.DataFrame(state["history"])
    seconds = float(history["seconds"].sum()) if "seconds" in history else float("nan")
    # Images per epoch as train() feeds them: full global batches, capped by steps_per_epoch.
    n_train = state.get("train_rows") or int((read_split(run_dir)["subset"] == "train").sum())
    batch = config["batch_size"] * state.get("replicas", 1)
    steps = max(1, n_train // batch)
    if config.get("steps_per_epoch"):
        steps = min(steps, config["steps_per_epoch"])
    # A frozen backbone with random weights is what a transfer setup becomes when
    # resolve_weights() found no ImageNet weights: flag it, it is not a transfer result.
    fallback = (
        config["model"] in BACKBONE_NAMES
        and config.get("weights") is None
        and config.get("trainable") is False
    )
    init = config.get("init")
    weights = config.get("weights") or ("random" if init is None else f"from {Path(init).name}")
    return {
        "model": config["model"],
        "weights": "random, frozen" if fallback else weights,
        "no_imagenet": fallback,
        "epochs": int(state["epoch"]),
        "best_epoch": int(state["best_epoch"]),
        "train_s": round(seconds, 1),
        "img_per_s": round(steps * batch * len(history) / seconds, 1) if seconds else np.nan,
        "val_auc": float(state["best_val_auc"]),
    }


# The leaderboard columns a notebook shows (results.csv keeps them all).
SHOWN = [
    "model", "weights", "params", "epochs", "train_s", "img_per_s", "val_auc",
    "n_test", "test_seen", "auc_tta1 [95% CI]", "auc_tta8 [95% CI]", "overlaps_top_ci",
    "threshold", "accuracy", "sensitivity", "specificity", "acc@0.5", "ece",
]  # fmt: skip


def results_table(
    run_dirs,
    cache: PackedCache,
    *,
    csv: str | os.PathLike | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The leaderboard: every run on the protocol's test rows (the same rows for all of them).

    Per run: training facts (``weights`` says ``random, frozen`` and ``no_imagenet`` is True
    for a transfer setup that got no ImageNet weights), test ROC AUC with its 95% DeLong
    interval without and with 8-view TTA, and at TTA 8 accuracy/sensitivity/specificity at the
    Youden threshold of the run's VALIDATION rows, ``acc@0.5`` and ECE. ``overlaps_top_ci``:
    the run's interval overlaps the best run's, so the separate intervals do not show them
    apart (a conservative screen: :func:`~pcamlib.metrics.auc_difference_ci`, paired on the
    same rows, can); ``test_set`` hashes the protocol's test ids; ``test_seen`` counts those
    left out because the run's model trained on them before (a run from the pretrained
    model); ``kaggle_public``/``kaggle_private``: its Kaggle scores, once submitted.

    With ``csv`` the rows are merged into that file by run name (rows of another test set are
    dropped with a warning) and the whole leaderboard is returned. Also returns
    ``{run: (y_true, y_prob)}`` at TTA 8 for ROC/PR plots. ``limit``: see :func:`subset_rows`.
    """
    from .kaggle import kaggle_scores
    from .train import load_model

    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("results_table needs at least one run directory")
    rows, curves = [], {}
    for run_dir in run_dirs:
        test = subset_rows(cache, run_dir, "test", limit)
        protocol_test = _protocol_test_ids(run_dir)
        test_set = fingerprint(protocol_test)
        if rows and test_set != rows[0]["test_set"]:
            raise ValueError(
                f"{run_dir} and {run_dirs[0]} have different test rows (another test_fraction, "
                "split or data): a leaderboard compares runs on one test set"
            )
        model = load_model(run_dir)
        row = {"run": run_dir.name, **_training_facts(run_dir), "params": model.count_params()}
        row["n_test"] = len(test)
        row["test_seen"] = len(protocol_test) - int((read_split(run_dir).subset == "test").sum())
        y = cache.labels[test]
        views = predict_cache(model, cache, test, tta=8, progress=progress, per_view=True)
        probs = {1: views[:, 0], 8: views.mean(axis=1, dtype=np.float64).astype(np.float32)}
        for t, p in probs.items():
            auc, lo, hi = auc_ci(y, p)
            row[f"auc_tta{t} [95% CI]"] = f"{auc:.3f} [{lo:.3f}, {hi:.3f}]"
            row.update({f"auc_tta{t}": auc, f"auc_tta{t}_lo": lo, f"auc_tta{t}_hi": hi})
        # Figures name the run as tables do: a transfer run without ImageNet weights says so.
        label = run_dir.name + (" (no ImageNet)" if row["no_imagenet"] else "")
        curves[label] = (y, probs[8])
        val = subset_rows(cache, run_dir, "val", limit)
        val_probs = predict_cache(model, cache, val, tta=8, progress=progress)
        row["threshold"] = youden_threshold(cache.labels[val], val_probs)
        at = binary_metrics(y, probs[8], threshold=row["threshold"])
        row.update({k: at[k] for k in ("accuracy", "sensitivity", "specificity")})
        row["acc@0.5"] = binary_metrics(y, probs[8])["accuracy"]
        row.update(ece=at["ece"], test_set=test_set, **kaggle_scores(run_dir))
        rows.append(row)
    table = pd.DataFrame(rows)
    if csv is not None:
        table = _merge(Path(csv), table)
    table = table.set_index("run")
    lo, hi, top = table["auc_tta8_lo"], table["auc_tta8_hi"], table["auc_tta8"].idxmax()
    table["overlaps_top_ci"] = (lo <= hi[top]) & (hi >= lo[top])
    front = ["model", "weights", "params", "epochs", "best_epoch", "train_s", "img_per_s"]
    front += ["val_auc", "n_test", "test_seen", "auc_tta1 [95% CI]", "auc_tta8 [95% CI]"]
    front += ["threshold"]
    front += ["accuracy", "sensitivity", "specificity", "acc@0.5", "ece"]
    table = table[front + [c for c in table.columns if c not in front]]
    if csv is not None:
        atomic_write_text(csv, table.to_csv())
    return table, curves


def _protocol_test_ids(run_dir: Path) -> list[str]:
    """The protocol's test ids on the run's data, with those the run's model had seen before.

    A run started from a model that trained on some of them (``split.csv``'s ``protocol``
    column keeps their part) is scored without them, on the same leaderboard.
    """
    split = read_split(run_dir)
    part = split["protocol"] if "protocol" in split else split["subset"]
    return split.loc[part == "test", "id"].tolist()


def _merge(csv: Path, new: pd.DataFrame) -> pd.DataFrame:
    """``new`` rows over the rows of ``csv`` (by run); rows of another test set are dropped."""
    if not csv.is_file():
        return new
    old = pd.read_csv(csv, dtype={"run": str, "test_set": str})
    if "run" not in old.columns:
        raise ValueError(f"{csv}: not a results table (no run column); move it away")
    if "test_set" not in old.columns:  # written before the test protocol: not comparable
        warnings.warn(f"{csv}: replacing a table scored before the test protocol", stacklevel=3)
        return new
    old = old[~old["run"].isin(new["run"])]
    same = old["test_set"] == new["test_set"].iloc[0]
    if not same.all():
        warnings.warn(
            f"{csv}: dropping {', '.join(map(str, old['run'][~same]))}: scored on another test set",
            stacklevel=3,
        )
    return pd.concat([old[same], new], ignore_index=True)


def batchnorm_gap(model, cache: PackedCache, rows, batch_size: int = 64) -> dict[str, float]:
    """ROC AUC with BatchNorm on its moving averages (inference) and on batch statistics.

    A short run leaves the moving averages (momentum 0.99) far from the statistics the network
    trained with: inference then ranks patches much worse than training mode does, and every
    probability can land on one side of 0.5. A large gap names that cause. (Training mode
    also turns Dropout on, which only adds noise to the second number.)
    """
    import keras
    from sklearn.metrics import roc_auc_score

    rows = np.asarray(rows)
    aucs = {}
    for name, training in (("moving averages", False), ("batch statistics", True)):
        probs = [
            keras.ops.convert_to_numpy(
                model(np.asarray(cache.images[rows[i : i + batch_size]]), training=training)
            )[:, 0]
            for i in range(0, len(rows), batch_size)
        ]
        aucs[name] = float(roc_auc_score(cache.labels[rows], np.concatenate(probs)))
    return aucs
