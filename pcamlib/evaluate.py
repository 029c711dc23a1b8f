"""Score models on packed data: the rows a run may be scored on, its metrics, the leaderboard.

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
from sklearn import metrics as skm

from .cache import PackedCache, atomic_write_text
from .metrics import auc_ci, binary_metrics, predict_proba, youden_threshold
from .pretrained import NAME, card, is_pretrained, seen_ids
from .stream import SUBSETS, fingerprint, read_split


def _isin(ids, wanted) -> np.ndarray:
    """Hashed membership: a boolean mask of ``ids`` that are in ``wanted``."""
    return pd.Series(ids, dtype=object).isin(set(wanted)).to_numpy()


def _keys(cache: PackedCache, split: pd.DataFrame) -> tuple[list[str], pd.Series, str]:
    """What makes a row of ``cache`` a row of ``split``: its pixels (content hash), or its id in
    a split.csv without hashes (then another dataset's names can collide)."""
    if "content" in split:
        return cache.content, split["content"], "content"
    return cache.ids, split["id"], "id"


def subset_rows(
    cache: PackedCache, run_dir: str | os.PathLike | None, subset: str, limit: int | None = None
) -> np.ndarray:
    """Row indices of ``cache`` to score: 'all', or the run's 'train', 'val' or 'test' rows
    (matched by :func:`_keys`; a patch stored twice is both rows). ``limit`` keeps the first
    ``limit // 2`` rows of each class (smoke runs), the same for every run on these test rows.
    """
    if subset == "all":
        rows = np.arange(len(cache))
    elif subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, all; got {subset!r}")
    elif run_dir is None or not (Path(run_dir) / "split.csv").is_file():
        raise ValueError(f"subset={subset!r} needs a run directory with split.csv as the model")
    else:
        split, split_csv = read_split(run_dir), Path(run_dir) / "split.csv"
        keys, split_keys, by = _keys(cache, split)
        wanted = split_keys[split["subset"] == subset]
        if wanted.empty:
            hint = " (a run made before the test protocol, or with test_fraction=0): retrain it"
            hint += ", or score its validation rows (subset 'val', which also chose its best.keras)"
            raise ValueError(f"{split_csv} has no {subset!r} rows" + hint * (subset == "test"))
        rows = np.flatnonzero(_isin(keys, wanted))
        if missing := int((~_isin(wanted, keys)).sum()):
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
    cache: PackedCache, model: str | os.PathLike, subset=None, *, include_train=False
) -> tuple[np.ndarray, dict]:
    """The rows of ``cache`` to score ``model`` (a run directory or a .keras file) on, and what.

    ``subset=None``: the run's held-out test rows, or every row of data holding none of the
    run's patches (by pixels, :func:`_keys`). Rows it trained on are refused unless
    ``include_train``. The dict gives ``subset``, ``train_rows`` (None for a bare .keras file)
    and ``unseen_data``; ``"pretrained"`` is scored on all rows but its own (``seen_left_out``).
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
    subset = ("all" if unseen else "test") if subset is None else subset
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
    rows = np.flatnonzero(~mask | include_train)
    left_out = 0 if include_train else int(mask.sum())
    return rows, {"subset": "all", "train_rows": int(mask[rows].sum()), "seen_left_out": left_out}


def predict_cache(
    model, cache: PackedCache, rows=None, *, tta=1, batch_size=256, progress=True, per_view=False
) -> np.ndarray:
    """Tumour probabilities for ``rows`` of a packed cache (all rows by default).

    Examples:
        >>> test = load_patches("data/sample", "test")
        >>> probs = predict_cache(load_model("pretrained"), test, tta=8)  # (29,) float32
    """
    rows = None if rows is None else np.asarray(rows)
    kwargs = {"tta": tta, "progress": progress, "per_view": per_view}
    return predict_proba(model, cache.images, rows=rows, batch_size=batch_size, **kwargs)


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
    metrics = binary_metrics(cache.labels[rows], probs, threshold, operating_point)
    return metrics | {"tta": tta}, probs


def run_summary(run_dir: str | os.PathLike) -> dict:
    """Model name, best val AUC and epochs of a finished (or interrupted) run directory, or of
    the shipped model's file (not scored on this data: its card's numbers, on its own val rows)."""
    if is_pretrained(run_dir) and not Path(run_dir).is_dir():
        name, config = NAME, card()
        state = {"epoch": len(config["history"]), **config}
    else:
        name, (state, config) = Path(run_dir).name, _run_files(Path(run_dir))
    summary = {"run": name, "model": config["model"], "epochs": state["epoch"]}
    return summary | {k: state[k] for k in ("best_epoch", "best_val_auc")}


def best_run(runs_dir: str | os.PathLike) -> Path:
    """The run under ``runs_dir`` with the highest VALIDATION AUC (ties: the first by name),
    never its test rows: they are only reported (see :func:`results_table`)."""
    runs = sorted(p.parent for p in Path(runs_dir).glob("*/state.json"))
    if not runs:
        raise FileNotFoundError(f"{runs_dir}: no training runs found (run notebooks 02/03 first)")
    return max(runs, key=lambda r: run_summary(r)["best_val_auc"])


def _run_files(run_dir: Path) -> tuple[dict, dict]:
    """A run's ``state.json`` and ``config.json``."""
    return tuple(json.loads((run_dir / f).read_text()) for f in ("state.json", "config.json"))


def _training_facts(run_dir: Path) -> dict:
    """Model, weights, epochs, seconds and throughput of a run, from its files."""
    from .config import BACKBONE_NAMES

    state, config = _run_files(run_dir)
    history = pd.DataFrame(state["history"])
    seconds = float(history["seconds"].sum()) if "seconds" in history else float("nan")
    # Images per epoch as train() feeds them: full global batches, capped by steps_per_epoch.
    n_train = state.get("train_rows") or int((read_split(run_dir)["subset"] == "train").sum())
    batch = config["batch_size"] * state.get("replicas", 1)
    steps = min(max(1, n_train // batch), config.get("steps_per_epoch") or np.inf)
    # A frozen backbone with random weights is what a transfer setup becomes when
    # resolve_weights() found no ImageNet weights: flag it, it is not a transfer result.
    fallback = config["model"] in BACKBONE_NAMES and config.get("weights") is None
    fallback = fallback and config.get("trainable") is False
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
    run_dirs, cache: PackedCache, *, csv=None, limit: int | None = None, progress: bool = False
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The leaderboard: every run on the protocol's test rows, and ``{run: (y, TTA-8 probs)}``.

    Per run: training facts (``no_imagenet``: a transfer setup without ImageNet weights), test
    ROC AUC with its 95% DeLong interval at TTA 1 and 8, and at TTA 8 the metrics at the Youden
    threshold of its VALIDATION rows; ``overlaps_top_ci``: its interval overlaps the best run's
    (:func:`~pcamlib.metrics.auc_difference_ci` is the paired test); ``test_seen``: test ids its
    model trained on before; Kaggle scores once submitted. With ``csv``, merged into that file
    by run (rows of another test set dropped with a warning).
    """
    from .kaggle import kaggle_scores
    from .train import load_model

    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("results_table needs at least one run directory")
    rows, curves = [], {}
    for run_dir in run_dirs:
        test, split = subset_rows(cache, run_dir, "test", limit), read_split(run_dir)
        # The protocol's test ids, with those its model had seen before (runs from another
        # model keep their part in the protocol column), so the leaderboard stays one.
        part = split["protocol"] if "protocol" in split else split["subset"]
        test_set = fingerprint(split.loc[part == "test", "id"].tolist())
        if rows and test_set != rows[0]["test_set"]:
            raise ValueError(
                f"{run_dir} and {run_dirs[0]} have different test rows (another test_fraction, "
                "split or data): a leaderboard compares runs on one test set"
            )
        model, y = load_model(run_dir), cache.labels[test]
        row = {"run": run_dir.name, **_training_facts(run_dir), "params": model.count_params()}
        row["n_test"] = len(test)
        row["test_seen"] = int((part == "test").sum() - (split.subset == "test").sum())
        views = predict_cache(model, cache, test, tta=8, progress=progress, per_view=True)
        probs = {1: views[:, 0], 8: views.mean(axis=1, dtype=np.float64).astype(np.float32)}
        for t, p in probs.items():
            auc, lo, hi = auc_ci(y, p)
            row[f"auc_tta{t} [95% CI]"] = f"{auc:.3f} [{lo:.3f}, {hi:.3f}]"
            row.update({f"auc_tta{t}": auc, f"auc_tta{t}_lo": lo, f"auc_tta{t}_hi": hi})
        # Figures name the run as tables do: a transfer run without ImageNet weights says so.
        curves[run_dir.name + (" (no ImageNet)" if row["no_imagenet"] else "")] = (y, probs[8])
        val = subset_rows(cache, run_dir, "val", limit)
        val_probs = predict_cache(model, cache, val, tta=8, progress=progress)
        row["threshold"] = youden_threshold(cache.labels[val], val_probs)
        at = binary_metrics(y, probs[8], threshold=row["threshold"])
        row |= {k: at[k] for k in ("accuracy", "sensitivity", "specificity")}
        row |= {"acc@0.5": binary_metrics(y, probs[8])["accuracy"], "ece": at["ece"]}
        row |= {"test_set": test_set, **kaggle_scores(run_dir)}
        rows.append(row)
    table = pd.DataFrame(rows)
    if csv is not None:
        table = _merge(Path(csv), table)
    table = table.set_index("run")
    lo, hi, top = table["auc_tta8_lo"], table["auc_tta8_hi"], table["auc_tta8"].idxmax()
    table["overlaps_top_ci"] = (lo <= hi[top]) & (hi >= lo[top])
    front = [c for c in SHOWN if c != "overlaps_top_ci"]
    front.insert(front.index("epochs") + 1, "best_epoch")
    table = table[front + [c for c in table.columns if c not in front]]
    if csv is not None:
        atomic_write_text(csv, table.to_csv())
    return table, curves


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
        dropped = ", ".join(map(str, old["run"][~same]))
        warnings.warn(f"{csv}: dropping {dropped}: scored on another test set", stacklevel=3)
    return pd.concat([old[same], new], ignore_index=True)


def batchnorm_gap(model, cache: PackedCache, rows, batch_size: int = 64) -> dict[str, float]:
    """ROC AUC with BatchNorm on its moving averages (inference) and on batch statistics.

    A short run leaves the moving averages (momentum 0.99) far from the statistics the network
    trained with, so inference ranks much worse than training mode: a large gap names that
    cause. (Training mode also turns Dropout on, which only adds noise to the second number.)
    """
    import keras

    rows, aucs = np.asarray(rows), {}
    for name, training in (("moving averages", False), ("batch statistics", True)):
        batches = (cache.images[rows[i : i + batch_size]] for i in range(0, len(rows), batch_size))
        probs = [model(np.asarray(x), training=training) for x in batches]
        probs = np.concatenate([keras.ops.convert_to_numpy(p)[:, 0] for p in probs])
        aucs[name] = float(skm.roc_auc_score(cache.labels[rows], probs))
    return aucs
