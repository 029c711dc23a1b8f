"""Score models on packed data: a run's ``split.csv`` rows matched by pixels; runs report on the
protocol's test rows, never on patches they trained on unless asked; val rows pick thresholds."""

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
from .pretrained import NAME, card, is_pretrained, seen_mask
from .stream import SUBSETS, fingerprint, read_split


def _isin(ids, wanted) -> np.ndarray:
    return pd.Series(ids, dtype=object).isin(set(wanted)).to_numpy()


def _split(run_dir) -> pd.DataFrame:
    """A run's :func:`read_split` with the columns today's train() writes, or a refusal."""
    split = read_split(run_dir)
    if missing := {"protocol", "content"} - set(split.columns):
        columns = ", ".join(sorted(missing))
        raise ValueError(f"{split.attrs['path']}: missing column(s) {columns}; retrain it")
    return split


def subset_rows(
    cache: PackedCache, run_dir: str | os.PathLike, subset: str, limit: int | None = None
) -> np.ndarray:
    """Row indices of ``cache``: 'all', or the run's 'train', 'val' or 'test' rows (by pixels),
    with ``limit`` the first ``limit // 2`` of each class (smoke runs; the same for every run)."""
    if subset not in (*SUBSETS, "all"):
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, all; got {subset!r}")
    rows, split = np.arange(len(cache)), _split(run_dir)
    if subset != "all":
        if (wanted := split["content"][split["subset"] == subset]).empty:
            hint = " (test_fraction=0): retrain it, or score subset 'val'" * (subset == "test")
            raise ValueError(f"{split.attrs['path']} has no {subset!r} rows{hint}")
        if missing := int((~_isin(wanted, cache.content)).sum()):
            gone = f"{missing} of its {len(wanted)} {subset} patches are not in {cache.path}"
            how = "(compared by content); evaluate on the run's data, or subset 'all'"
            raise ValueError(f"{split.attrs['path']}: {gone} {how}")
        rows = np.flatnonzero(_isin(cache.content, wanted))
    if limit is None or limit >= len(rows) or cache.labels is None:
        return rows
    return np.sort(np.concatenate([rows[cache.labels[rows] == c][: limit // 2] for c in (0, 1)]))


def scoring_rows(
    cache: PackedCache, model: str | os.PathLike, subset=None, *, include_train=False
) -> tuple[np.ndarray, dict]:
    """Rows of ``cache`` to score ``model`` (a run directory or .keras file) on, and what:
    ``subset=None`` is the run's test rows, or all rows of data holding none of its patches.
    Rows it trained on are refused unless ``include_train``; the dict counts them."""
    if is_pretrained(model):
        return _pretrained_rows(cache, subset, include_train)
    model = Path(model)
    run_dir = next((d for d in (model, model.parent) if (d / "split.csv").is_file()), None)
    if run_dir is None and subset != "all":
        raise ValueError(f"{model}: no split.csv beside it; pass subset 'all' to score every row")
    if run_dir is None:
        return np.arange(len(cache)), {"subset": "all", "train_rows": None}
    split = _split(run_dir)
    unseen = not _isin(cache.content, split["content"]).any()
    subset = ("all" if unseen else "test") if subset is None else subset
    rows = subset_rows(cache, run_dir, subset)
    trained = split["content"][split["subset"] == "train"]
    if (n_train := int(_isin(cache.content, trained)[rows].sum())) and not include_train:
        raise ValueError(
            f"subset {subset!r} of {cache.path} holds {n_train} of the {len(trained)} rows "
            f"{run_dir} trained on (its split.csv, matched by content); pass include_train "
            "(--include-train) to score them anyway, or leave subset unset for its test rows"
        )
    return rows, {"subset": subset, "train_rows": n_train, "unseen_data": unseen}


def _pretrained_rows(cache: PackedCache, subset: str | None, include_train: bool):
    """Every row of ``cache`` but those the shipped model trained on (:func:`seen_mask`)."""
    if subset not in (None, "all"):
        raise ValueError(f"subset {subset!r} needs a run's split.csv; leave it unset")
    if (mask := seen_mask(cache)) is None:
        raise ValueError(
            f"{cache.path}: which patches the pretrained model trained on is unknown (Kaggle "
            "training data); score it on the sample, Kaggle's test set or PCam valid/test"
        )
    rows = np.flatnonzero(~mask | include_train)
    left_out = 0 if include_train else int(mask.sum())
    return rows, {"subset": "all", "train_rows": int(mask[rows].sum()), "seen_left_out": left_out}


def predict_cache(
    model, cache: PackedCache, rows=None, *, tta=1, batch_size=256, progress=True, per_view=False
) -> np.ndarray:
    """Tumour probabilities for ``rows`` of a packed cache (all rows by default)."""
    how = {"tta": tta, "batch_size": batch_size, "progress": progress, "per_view": per_view}
    return predict_proba(model, cache.images, rows=rows, **how)


def evaluate(
    model,
    cache: PackedCache,
    rows=None,
    *,
    tta=1,
    batch_size=256,
    operating_point=0.95,
    threshold=0.5,
    progress=True,
) -> tuple[dict, np.ndarray]:
    """Metrics (ROC/PR AUC; accuracy, sensitivity… at ``threshold``; see binary_metrics), probs."""
    if cache.labels is None:
        raise ValueError(f"{cache.path}: evaluation needs labelled data")
    rows = np.arange(len(cache)) if rows is None else np.asarray(rows)
    probs = predict_cache(model, cache, rows, tta=tta, batch_size=batch_size, progress=progress)
    metrics = binary_metrics(cache.labels[rows], probs, threshold, operating_point)
    return metrics | {"tta": tta}, probs


def run_summary(run_dir: str | os.PathLike) -> dict:
    """Model, epochs and best val AUC of a run directory, or of the shipped model's file (card)."""
    if is_pretrained(run_dir) and not Path(run_dir).is_dir():
        name, config = NAME, card()
        state = {"epoch": len(config["history"]), **config}
    else:
        name, (state, config) = Path(run_dir).name, _run_files(Path(run_dir))
    summary = {"run": name, "model": config["model"], "epochs": state["epoch"]}
    return summary | {k: state[k] for k in ("best_epoch", "best_val_auc")}


def best_run(runs_dir: str | os.PathLike) -> Path:
    """The run under ``runs_dir`` with the highest VALIDATION AUC (ties: the first by name)."""
    if not (runs := sorted(p.parent for p in Path(runs_dir).glob("*/state.json"))):
        raise FileNotFoundError(f"{runs_dir}: no training runs found (run notebooks 02/03 first)")
    return max(runs, key=lambda r: run_summary(r)["best_val_auc"])


def _run_files(run_dir: Path) -> tuple[dict, dict]:
    return tuple(json.loads((run_dir / f).read_text()) for f in ("state.json", "config.json"))


def _training_facts(run_dir: Path, split: pd.DataFrame) -> dict:
    """Model, weights, epochs, seconds and throughput of a run, from its files."""
    from .config import BACKBONE_NAMES

    state, config = _run_files(run_dir)
    seconds = float(sum(epoch["seconds"] for epoch in state["history"]))
    # Images per epoch as train() feeds them: full global batches, capped by steps_per_epoch.
    n_train = state.get("train_rows") or int((split["subset"] == "train").sum())
    batch = config["batch_size"] * state.get("replicas", 1)
    steps = min(max(1, n_train // batch), config["steps_per_epoch"] or np.inf)
    images = steps * batch * len(state["history"])
    # A transfer setup that resolve_weights() left without ImageNet weights is no transfer result.
    frozen_random = (config["weights"], config["trainable"]) == (None, False)
    fallback = config["model"] in BACKBONE_NAMES and frozen_random
    init = config["init"] and f"from {Path(config['init']).name}"
    weights = config["weights"] or init or "random"
    facts = {"model": config["model"], "weights": "random, frozen" if fallback else weights}
    facts |= {"no_imagenet": fallback, "epochs": state["epoch"], "best_epoch": state["best_epoch"]}
    facts |= {"train_s": round(seconds, 1), "val_auc": float(state["best_val_auc"])}
    return facts | {"img_per_s": round(images / seconds, 1) if seconds else np.nan}


# The leaderboard columns a notebook shows (results.csv keeps them all).
SHOWN = [
    "model", "weights", "params", "epochs", "train_s", "img_per_s", "val_auc",
    "n_test", "test_seen", "auc_tta1 [95% CI]", "auc_tta8 [95% CI]", "overlaps_top_ci",
    "threshold", "accuracy", "sensitivity", "specificity", "acc@0.5", "ece",
]  # fmt: skip


def _score_run(run_dir: Path, split, cache: PackedCache, limit, progress) -> tuple[dict, tuple]:
    """One leaderboard row of ``run_dir`` and its test ``(labels, TTA-8 probabilities)``."""
    from .train import load_model

    test, val = (subset_rows(cache, run_dir, s, limit) for s in ("test", "val"))
    model, y = load_model(run_dir), cache.labels[test]
    row = {"run": run_dir.name, **_training_facts(run_dir, split), "params": model.count_params()}
    seen = (split["protocol"] == "test").sum() - (split["subset"] == "test").sum()
    row |= {"n_test": len(test), "test_seen": int(seen)}
    views = predict_cache(model, cache, test, tta=8, progress=progress, per_view=True)
    probs = {1: views[:, 0], 8: views.mean(axis=1, dtype=np.float64).astype(np.float32)}
    for t, p in probs.items():
        auc, lo, hi = auc_ci(y, p)
        row[f"auc_tta{t} [95% CI]"] = f"{auc:.3f} [{lo:.3f}, {hi:.3f}]"
        row.update({f"auc_tta{t}": auc, f"auc_tta{t}_lo": lo, f"auc_tta{t}_hi": hi})
    val_probs = predict_cache(model, cache, val, tta=8, progress=progress)
    row["threshold"] = youden_threshold(cache.labels[val], val_probs)
    at = binary_metrics(y, probs[8], threshold=row["threshold"])
    row |= {k: at[k] for k in ("accuracy", "sensitivity", "specificity", "ece")}
    row["acc@0.5"] = binary_metrics(y, probs[8])["accuracy"]
    return row, (y, probs[8])


def results_table(
    run_dirs, cache: PackedCache, *, csv=None, limit: int | None = None, progress: bool = False
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The leaderboard of runs on the protocol's test rows, and ``{run: (y, TTA-8 probs)}``:
    DeLong 95% CIs at TTA 1 and 8, metrics at the Youden threshold of the VALIDATION rows,
    ``overlaps_top_ci``; with ``csv``, merged into it (other test sets dropped with a warning)."""
    from .kaggle import kaggle_scores

    if not (run_dirs := [Path(r) for r in run_dirs]):
        raise ValueError("results_table needs at least one run directory")
    splits = [_split(r) for r in run_dirs]
    # The protocol's test rows, with those an init model had seen: one set for every run.
    sets = [fingerprint(s.loc[s["protocol"] == "test", "id"]) for s in splits]
    if other := [r for r, t in zip(run_dirs, sets, strict=True) if t != sets[0]]:
        what = "different test rows (another test_fraction, split or data)"
        raise ValueError(f"{other[0]} and {run_dirs[0]} have {what}: a leaderboard needs one")
    rows, curves = [], {}
    for run_dir, split in zip(run_dirs, splits, strict=True):
        row, curve = _score_run(run_dir, split, cache, limit, progress)
        # Figures name the run as tables do: a transfer run without ImageNet weights says so.
        curves[run_dir.name + (" (no ImageNet)" if row["no_imagenet"] else "")] = curve
        rows.append(row | {"test_set": sets[0], **kaggle_scores(run_dir)})
    table = pd.DataFrame(rows) if csv is None else _merge(Path(csv), pd.DataFrame(rows))
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
    if missing := {"run", "test_set"} - set(old.columns):
        raise ValueError(f"{csv}: not a results table (no {' or '.join(sorted(missing))} column)")
    old = old[~old["run"].isin(new["run"])]
    if not (same := old["test_set"] == new["test_set"].iloc[0]).all():
        dropped = ", ".join(map(str, old["run"][~same]))
        warnings.warn(f"{csv}: dropping {dropped}: scored on another test set", stacklevel=3)
    return pd.concat([old[same], new], ignore_index=True)


def batchnorm_gap(model, cache: PackedCache, rows, batch_size: int = 64) -> dict[str, float]:
    """ROC AUC with BatchNorm on moving averages and on batch statistics: a large gap says a
    short run left the averages (momentum 0.99) far off (training mode also turns Dropout on)."""
    import keras

    rows, aucs = np.asarray(rows), {}
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    for name, training in (("moving averages", False), ("batch statistics", True)):
        probs = [model(np.asarray(cache.images[b]), training=training) for b in batches]
        probs = np.concatenate([keras.ops.convert_to_numpy(p)[:, 0] for p in probs])
        aucs[name] = float(skm.roc_auc_score(cache.labels[rows], probs))
    return aucs
