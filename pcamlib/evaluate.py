"""Glue between models, packed data and metrics: evaluate a model, predict a test set.

Validation rows can be restricted to a run's own held-out subset (``split.csv``), so a model is
never scored on the patches it trained on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import PackedCache
from .metrics import binary_metrics, predict_proba


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
    """Row indices of ``cache`` to score: all, or the run's validation ids ('val').

    ``limit`` keeps a class-balanced subset of that many rows (smoke runs).
    """
    rows = _subset_rows(cache, run_dir, subset)
    if limit is None or limit >= len(rows) or cache.labels is None:
        return rows
    per_class = [rows[cache.labels[rows] == c][: limit // 2] for c in (0, 1)]
    return np.sort(np.concatenate(per_class))


def _subset_rows(cache: PackedCache, run_dir, subset: str) -> np.ndarray:
    if subset == "all":
        return np.arange(len(cache))
    if subset != "val":
        raise ValueError(f"subset must be 'all' or 'val', got {subset!r}")
    split_csv = Path(run_dir or "") / "split.csv"
    if run_dir is None or not split_csv.is_file():
        raise ValueError("subset='val' needs a run directory with split.csv as the model")
    split = pd.read_csv(split_csv, dtype={"id": str})
    val_ids = set(split.loc[split["subset"] == "val", "id"])
    rows = np.flatnonzero([i in val_ids for i in cache.ids])
    if len(rows) != len(val_ids):
        raise ValueError(
            f"{split_csv}: {len(val_ids) - len(rows)} validation id(s) are not in {cache.path}; "
            "evaluate on the data the run was trained on"
        )
    return rows


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
    progress: bool = True,
) -> tuple[dict, np.ndarray]:
    """Metrics (ROC/PR AUC, accuracy, sensitivity… see metrics.binary_metrics) and the probs."""
    if cache.labels is None:
        raise ValueError(f"{cache.path}: evaluation needs labelled data")
    rows = np.arange(len(cache)) if rows is None else np.asarray(rows)
    probs = predict_cache(model, cache, rows, tta=tta, batch_size=batch_size, progress=progress)
    metrics = binary_metrics(cache.labels[rows], probs, operating_point=operating_point)
    metrics["tta"] = tta
    return metrics, probs


def run_summary(run_dir: str | os.PathLike) -> dict:
    """Model name, best val AUC and epochs of a finished (or interrupted) run directory."""
    import json

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
    """The run under ``runs_dir`` with the highest validation AUC (ties: the first by name)."""
    runs = sorted(p.parent for p in Path(runs_dir).glob("*/state.json"))
    if not runs:
        raise FileNotFoundError(f"{runs_dir}: no training runs found (run notebooks 02/03 first)")
    return max(runs, key=lambda r: run_summary(r)["best_val_auc"])


def results_table(
    run_dirs,
    cache: PackedCache,
    *,
    tta: tuple[int, ...] = (1, 8),
    limit: int | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Validation metrics of several runs, each on its *own* held-out ids, with and without TTA.

    Returns the table (one row per run) and ``{run: (y_true, y_prob)}`` for ROC/PR plots;
    ``limit`` caps the validation rows per run (see :func:`subset_rows`).
    """
    from .train import load_model

    rows, curves = [], {}
    for run_dir in map(Path, run_dirs):
        model = load_model(run_dir)
        idx = subset_rows(cache, run_dir, "val", limit)
        row = {"run": run_dir.name, "params": model.count_params()}
        for t in tta:
            metrics, probs = evaluate(model, cache, idx, tta=t, progress=progress)
            row[f"auc_tta{t}"] = metrics["roc_auc"]
            row[f"acc_tta{t}"] = metrics["accuracy"]
            curves[run_dir.name] = (cache.labels[idx], probs)
        rows.append(row)
    return pd.DataFrame(rows).set_index("run"), curves
