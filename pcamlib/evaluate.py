"""Glue between models, packed data and metrics: evaluate a model, predict a test set, rank runs.

Rows come from a run's ``split.csv`` (:mod:`pcamlib.protocol`): runs are reported on the
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

from .cache import PackedCache
from .io import atomic_write_text
from .metrics import auc_ci, binary_metrics, predict_proba, youden_threshold
from .protocol import fingerprint, read_split

SUBSETS = ("test", "val", "train", "all")


class _Rows:
    """A lazy row view (``images[rows]``) so predict_proba streams from the memmap in batches."""

    def __init__(self, images: np.ndarray, rows: np.ndarray):
        self.images, self.rows = images, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: slice) -> np.ndarray:
        return np.asarray(self.images[self.rows[item]])


def subset_rows(
    cache: PackedCache, run_dir: str | os.PathLike | None, subset: str, limit: int | None = None
) -> np.ndarray:
    """Row indices of ``cache`` to score: all, or the run's 'train', 'val' or 'test' ids.

    ``limit`` keeps a class-balanced subset of that many rows (smoke runs); being the first
    rows of each class, it keeps the same rows for every run with the same test ids.
    """
    rows = _subset_rows(cache, run_dir, subset)
    return _limited(cache, rows, limit)


def _limited(cache: PackedCache, rows: np.ndarray, limit: int | None) -> np.ndarray:
    if limit is None or limit >= len(rows) or cache.labels is None:
        return rows
    per_class = [rows[cache.labels[rows] == c][: limit // 2] for c in (0, 1)]
    return np.sort(np.concatenate(per_class))


def _subset_rows(cache: PackedCache, run_dir, subset: str) -> np.ndarray:
    if subset == "all":
        return np.arange(len(cache))
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}; got {subset!r}")
    if run_dir is None or not (Path(run_dir) / "split.csv").is_file():
        raise ValueError(f"subset={subset!r} needs a run directory with split.csv as the model")
    split = read_split(run_dir)
    wanted = set(split.loc[split["subset"] == subset, "id"])
    split_csv = Path(run_dir) / "split.csv"
    if not wanted:
        hint = (
            " (a run made before the test protocol, or with test_fraction=0): retrain it, or "
            "score its validation rows (subset 'val', which also chose its best.keras)"
            if subset == "test"
            else ""
        )
        raise ValueError(f"{split_csv} has no {subset!r} rows{hint}")
    rows = np.flatnonzero([i in wanted for i in cache.ids])
    if len(rows) != len(wanted):
        raise ValueError(
            f"{split_csv}: {len(wanted) - len(rows)} {subset} id(s) are not in {cache.path}; "
            "evaluate on the data the run was trained on"
        )
    return rows


def run_directory(model: str | os.PathLike) -> Path | None:
    """The run directory of ``model`` (a run directory, or a .keras file beside a split.csv)."""
    model = Path(model)
    for folder in (model, model.parent):
        if (folder / "split.csv").is_file():
            return folder
    return None


def scoring_rows(
    cache: PackedCache,
    model: str | os.PathLike,
    subset: str | None = None,
    *,
    include_train: bool = False,
    limit: int | None = None,
) -> tuple[np.ndarray, dict]:
    """The rows of ``cache`` to score ``model`` on, and what they are.

    ``subset=None`` means the run's held-out test rows, or every row when the data holds none
    of the run's ids (another dataset). Rows that include the run's training ids are refused
    unless ``include_train``. The dict gives ``subset`` and ``train_rows`` (how many of the
    rows the model trained on; None when ``model`` is a bare .keras file with no split.csv).
    """
    run_dir = run_directory(model)
    if run_dir is None:
        if subset != "all":
            raise ValueError(
                f"{model} has no split.csv beside it, so which rows it trained on is unknown; "
                "pass subset 'all' to score every row anyway"
            )
        rows = _limited(cache, np.arange(len(cache)), limit)
        return rows, {"subset": "all", "train_rows": None}
    split = read_split(run_dir)
    known = set(split["id"])
    seen = np.fromiter((i in known for i in cache.ids), bool, len(cache))
    if subset is None:
        subset = "test" if seen.any() else "all"
    rows = subset_rows(cache, run_dir, subset, limit)
    train_ids = set(split.loc[split["subset"] == "train", "id"])
    ids = np.asarray(cache.ids, dtype=object)[rows]
    n_train = int(sum(i in train_ids for i in ids))
    if n_train and not include_train:
        raise ValueError(
            f"subset {subset!r} of {cache.path} holds {n_train} of the {len(train_ids)} rows "
            f"{run_dir} trained on (its split.csv); pass include_train (--include-train) to "
            "score them anyway, or leave subset unset for the held-out test rows"
        )
    return rows, {"subset": subset, "train_rows": n_train, "unseen_data": not seen.any()}


def predict_cache(
    model,
    cache: PackedCache,
    rows: np.ndarray | None = None,
    *,
    tta: int = 1,
    batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """Tumour probabilities for ``rows`` of a packed cache (all rows by default)."""
    rows = np.arange(len(cache)) if rows is None else np.asarray(rows)
    return predict_proba(
        model, _Rows(cache.images, rows), batch_size=batch_size, tta=tta, progress=progress
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
    """Model name, best val AUC and epochs of a finished (or interrupted) run directory."""
    run_dir = Path(run_dir)
    state = json.loads((run_dir / "state.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    return {
        "run": run_dir.name,
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
    n_train = int((read_split(run_dir)["subset"] == "train").sum())
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
    return {
        "model": config["model"],
        "weights": "random, frozen" if fallback else (config.get("weights") or "random"),
        "no_imagenet": fallback,
        "epochs": int(state["epoch"]),
        "best_epoch": int(state["best_epoch"]),
        "train_s": round(seconds, 1),
        "img_per_s": round(steps * batch * len(history) / seconds, 1) if seconds else np.nan,
        "val_auc": float(state["best_val_auc"]),
    }


def _ci_text(auc: float, lo: float, hi: float) -> str:
    return f"{auc:.3f} [{lo:.3f}, {hi:.3f}]"


def _rank(table: pd.DataFrame, tta: int) -> pd.DataFrame:
    """Flag the runs whose 95% interval overlaps that of the top run (not distinguishable)."""
    lo, hi = table[f"auc_tta{tta}_lo"], table[f"auc_tta{tta}_hi"]
    top = table[f"auc_tta{tta}"].idxmax()
    table["overlaps_top_ci"] = (lo <= hi[top]) & (hi >= lo[top])
    return table


# The leaderboard columns a notebook shows (results.csv keeps them all).
SHOWN = [
    "model", "weights", "params", "epochs", "train_s", "img_per_s", "val_auc", "n_test",
    "auc_tta1 [95% CI]", "auc_tta8 [95% CI]", "overlaps_top_ci",
    "threshold", "accuracy", "sensitivity", "specificity", "acc@0.5", "ece",
]  # fmt: skip


def results_table(
    run_dirs,
    cache: PackedCache,
    *,
    csv: str | os.PathLike | None = None,
    tta: tuple[int, ...] = (1, 8),
    limit: int | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The leaderboard: every run on the protocol's test rows (the same rows for all of them).

    Per run: model, weights (``random, frozen`` + ``no_imagenet``: a transfer setup that got no
    ImageNet weights), params, epochs, training seconds and images/s (training images per
    second of epoch wall time, validation included), best val AUC, then on the test rows for
    each TTA in ``tta``: ROC AUC with its 95% DeLong interval (``auc_tta8 [95% CI]`` as text,
    ``auc_tta8_lo``/``_hi`` as numbers); and, with the largest TTA, accuracy, sensitivity and
    specificity at the threshold that maximises Youden's J on the run's VALIDATION rows
    (``threshold``), accuracy at 0.5 (``acc@0.5``) and ECE. ``overlaps_top_ci`` marks runs whose
    interval overlaps the best run's: the test set cannot tell them apart. ``test_set`` is a
    hash of the scored test ids.

    With ``csv`` (``outputs/results.csv``) the rows are merged into that file by run name (a
    rerun replaces its row; rows scored on another test set are dropped with a warning) and
    the whole leaderboard is returned. Also returns ``{run: (y_true, y_prob)}`` of the test rows
    at the largest TTA, for ROC/PR plots. ``limit`` caps the test and validation rows
    (class-balanced; see :func:`subset_rows`).

    Examples:
        >>> table, curves = results_table(runs, cache, csv=S.out_dir / "results.csv")
        >>> table.sort_values("auc_tta8", ascending=False)
    """
    from .train import load_model

    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("results_table needs at least one run directory")
    rows, curves, test_sets = [], {}, {}
    top_tta = max(tta)
    for run_dir in run_dirs:
        test = subset_rows(cache, run_dir, "test", limit)
        test_sets[run_dir] = fingerprint(np.asarray(cache.ids, dtype=object)[test])
        first = next(iter(test_sets))
        if test_sets[run_dir] != test_sets[first]:
            raise ValueError(
                f"{run_dir} and {first} have different test rows (another test_fraction, "
                "split or data): a leaderboard compares runs on one test set"
            )
        model = load_model(run_dir)
        row = {"run": run_dir.name, **_training_facts(run_dir), "params": model.count_params()}
        row["n_test"] = len(test)
        y = cache.labels[test]
        # Figures name the run as tables do: a transfer run without ImageNet weights says so.
        label = run_dir.name + (" (no ImageNet)" if row.get("no_imagenet") else "")
        for t in tta:
            probs = predict_cache(model, cache, test, tta=t, progress=progress)
            auc, lo, hi = auc_ci(y, probs)
            row[f"auc_tta{t} [95% CI]"] = _ci_text(auc, lo, hi)
            row.update({f"auc_tta{t}": auc, f"auc_tta{t}_lo": lo, f"auc_tta{t}_hi": hi})
            if t == top_tta:
                curves[label] = (y, probs)
        y, probs = curves[label]
        val = subset_rows(cache, run_dir, "val", limit)
        val_probs = predict_cache(model, cache, val, tta=top_tta, progress=progress)
        threshold = youden_threshold(cache.labels[val], val_probs)
        at = binary_metrics(y, probs, threshold=threshold)
        row.update(
            threshold=threshold,
            accuracy=at["accuracy"],
            sensitivity=at["sensitivity"],
            specificity=at["specificity"],
            **{"acc@0.5": binary_metrics(y, probs)["accuracy"]},
            ece=at["ece"],
            test_set=test_sets[run_dir],
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if csv is not None:
        table = _merge(Path(csv), table)
    table = _rank(table.set_index("run"), top_tta)
    front = ["model", "weights", "params", "epochs", "best_epoch", "train_s", "img_per_s"]
    front += ["val_auc", "n_test", *(f"auc_tta{t} [95% CI]" for t in tta)]
    front += ["threshold", "accuracy", "sensitivity", "specificity", "acc@0.5", "ece"]
    table = table[front + [c for c in table.columns if c not in front]]
    if csv is not None:
        atomic_write_text(csv, table.to_csv())
    return table, curves


def _merge(csv: Path, new: pd.DataFrame) -> pd.DataFrame:
    """``new`` rows over the rows of ``csv`` (by run); rows of another test set are dropped."""
    if not csv.is_file() or new.empty:
        return new
    old = pd.read_csv(csv, dtype={"run": str, "test_set": str})
    if "run" not in old.columns:
        raise ValueError(f"{csv}: not a results table (no run column); move it away")
    if "test_set" not in old.columns:  # written before the test protocol: not comparable
        warnings.warn(f"{csv}: replacing a table scored before the test protocol", stacklevel=3)
        return new
    old = old[~old["run"].isin(new["run"])]
    other = old[old["test_set"] != new["test_set"].iloc[0]]
    if len(other):
        warnings.warn(
            f"{csv}: dropping {', '.join(map(str, other['run']))}: scored on another test set",
            stacklevel=3,
        )
    return pd.concat([old[old["test_set"] == new["test_set"].iloc[0]], new], ignore_index=True)


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
    y = cache.labels[rows]
    aucs = {}
    for name, training in (("moving averages", False), ("batch statistics", True)):
        probs = [
            keras.ops.convert_to_numpy(
                model(np.asarray(cache.images[rows[i : i + batch_size]]), training=training)
            )[:, 0]
            for i in range(0, len(rows), batch_size)
        ]
        aucs[name] = float(roc_auc_score(y, np.concatenate(probs)))
    return aucs
