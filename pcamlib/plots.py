"""Charts for EDA, training curves and evaluation from plain arrays, so notebooks stay thin.

ROC, precision-recall, confusion-matrix and reliability plots are scikit-learn's Display
classes drawn on the given axes. Pictures of patches (grids, confident errors, Grad-CAM
overlays) live in :mod:`pcamlib.gallery` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn import metrics as skm
from sklearn.calibration import CalibrationDisplay

from .gallery import grid, patches_at, plot_confident_errors, plot_gradcam, plot_patch_grid
from .metrics import expected_calibration_error, require_both_classes, validate_binary
from .sources import labels01

__all__ = [
    "CLASS_NAMES",
    "plot_channel_stats",
    "plot_confident_errors",
    "plot_confusion",
    "plot_gradcam",
    "plot_history",
    "plot_label_balance",
    "plot_patch_grid",
    "plot_pr",
    "plot_prob_hist",
    "plot_reliability",
    "plot_roc",
]

CLASS_NAMES = ("normal (0)", "tumour (1)")
PALETTE = {CLASS_NAMES[0]: "#4C72B0", CLASS_NAMES[1]: "#C44E52"}
_IGNORED_HISTORY = {"epoch", "learning_rate", "seconds"}
_BY_CLASS = {"hue_order": CLASS_NAMES, "palette": PALETTE}  # the same colour per class everywhere
_STEPS = {"element": "step", "common_norm": False}  # per-class histograms, each normalised
_TITLES = {"loss": "Loss", "auc": "ROC AUC", "pr_auc": "PR AUC"}
_TITLES |= dict.fromkeys(("accuracy", "acc", "binary_accuracy"), "Accuracy")


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """Draw on the caller's axes when given, else on a fresh figure."""
    if ax is None:
        return plt.subplots(figsize=figsize)
    return ax.figure.figure, ax  # a subfigure's .figure is the top-level figure


# --------------------------------------------------------------------------- training curves


def _metric_order(name: str) -> tuple[int, str]:
    """Loss first, then accuracy, then AUC, then anything else alphabetically."""
    low = name.lower()
    return [low == "loss", "acc" in low, "auc" in low, True].index(True), low


def _pretty(name: str) -> str:
    """Human panel titles for the usual Keras metric names (``auc_1`` is still ROC AUC)."""
    low = name.lower()
    key = next((k for k in ("auc", "pr_auc") if low.startswith(k)), low)
    return _TITLES.get(key, name.replace("_", " "))


def _best(frame: pd.DataFrame, bases: list[str], epochs: np.ndarray) -> tuple[int, str, str] | None:
    """(row, metric, label) of the best validation AUC, else of the lowest val_loss, else None."""
    auc = next((b for b in bases if b.lower().startswith("auc") and f"val_{b}" in frame), None)
    for base, pick, what in ((auc, np.nanargmax, "AUC"), ("loss", np.nanargmin, "loss")):
        col = f"val_{base}"
        if base is not None and col in frame and frame[col].notna().any():
            i = int(pick(frame[col].to_numpy()))
            return i, base, f"best val {what} {frame[col].iloc[i]:.4f} @ epoch {epochs[i]}"
    return None


def _history_panel(ax, history: pd.DataFrame, epochs: np.ndarray, base: str) -> None:
    """One metric's train and validation curves (or the learning rate, on a log scale)."""
    if base == "learning_rate":
        ax.plot(epochs, history[base], color="grey", marker=".")
        ax.set_yscale("log")
        ax.set_title("Learning rate")
    else:
        for col, label in ((base, "train"), (f"val_{base}", "validation")):
            if col in history:
                ax.plot(epochs, history[col], marker=".", label=label)
        ax.set_title(_pretty(base))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def plot_history(history: pd.DataFrame, *, figsize: tuple[float, float] | None = None) -> Figure:
    """Train vs validation curves per metric, with the best-validation-AUC epoch marked.

    ``history`` is a run's history (``TrainResult.history`` or ``history.csv``: one row per
    epoch, ``epoch`` from 1). Without a validation AUC the marker falls back to the lowest
    ``val_loss``.
    """
    if history.empty:
        raise ValueError("history is empty: no epochs to plot")
    epochs = history["epoch"].to_numpy()
    numeric = [
        c
        for c in history
        if c not in _IGNORED_HISTORY and pd.api.types.is_numeric_dtype(history[c])
    ]
    bases = sorted({c.removeprefix("val_") for c in numeric}, key=_metric_order)
    panels = bases + (["learning_rate"] if "learning_rate" in history else [])
    if not panels:
        raise ValueError(f"history has no numeric metric columns; columns are {list(history)}")
    best = _best(history, bases, epochs)
    fig, axes = grid(len(panels), 3, (5, 3.6), figsize=figsize)
    for ax, base in zip(axes.flat, panels, strict=False):
        _history_panel(ax, history, epochs, base)
        if best is not None:
            i, best_base, best_label = best
            ax.axvline(epochs[i], color="0.5", linestyle="--", linewidth=1)
            if base == best_base:
                y = history[f"val_{base}"].iloc[i]
                ax.plot([epochs[i]], [y], "*", ms=14, color="gold", mec="k", label=best_label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Training history" + (f" - {best[2]}" if best else ""))
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- EDA


def plot_label_balance(labels: Any, ax: Axes | None = None) -> Figure:
    """Class counts with percentages, to see the imbalance before choosing metrics and splits."""
    y = labels01(labels)
    names = np.take(CLASS_NAMES, y)
    fig, ax = _axes(ax, (5, 4))
    sns.countplot(x=names, hue=names, order=CLASS_NAMES, legend=False, ax=ax, **_BY_CLASS)
    counts = np.bincount(y, minlength=2)
    for i, c in enumerate(counts):
        ax.text(i, c, f"{c:,}\n({100 * c / len(y):.1f}%)", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(counts) * 1.18)
    ax.set(xlabel="class", ylabel="patches", title=f"Label balance (n = {len(y):,})")
    return fig


def plot_channel_stats(images: Any, labels: Any, *, max_images: int = 5000) -> Figure:
    """Per-class distributions of each image's mean R, G, B intensity (stain/brightness EDA).

    At most ``max_images`` patches (a seeded random subset) are read, 1024 at a time.
    """
    y = labels01(labels)
    if len(y) != len(images):
        raise ValueError(f"labels has {len(y)} rows but images has {len(images)}")
    idx = np.arange(len(y))
    if len(idx) > max_images:
        idx = np.sort(np.random.default_rng(0).choice(idx, size=max_images, replace=False))
    chan = np.concatenate(
        [
            patches_at(images, idx[s : s + 1024]).astype(np.float32).mean(axis=(1, 2))
            for s in range(0, len(idx), 1024)
        ]
    )
    n_ch = chan.shape[1]
    names = ["red", "green", "blue"] if n_ch == 3 else [f"channel {c}" for c in range(n_ch)]
    frame = pd.DataFrame(chan, columns=names)
    frame["class"] = np.take(CLASS_NAMES, y[idx])
    fig, axes = grid(n_ch, n_ch, (4.5, 3.6))
    for ax, name in zip(axes.flat, names, strict=True):
        sns.histplot(
            frame, x=name, hue="class", bins=50, stat="density", ax=ax, **_STEPS, **_BY_CLASS
        )
        ax.set(xlabel=f"mean {name} intensity per patch", title=name.capitalize())
    fig.suptitle(f"Per-class channel intensity (n = {len(idx):,} patches)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- evaluation

_CURVES = {  # Display class, score, its short name, axis labels, legend place, title
    "roc": (
        skm.RocCurveDisplay,
        skm.roc_auc_score,
        "AUC",
        ("false positive rate (1 - specificity)", "true positive rate (sensitivity)"),
        "lower right",
        "ROC",
    ),
    "pr": (
        skm.PrecisionRecallDisplay,
        skm.average_precision_score,
        "AP",
        ("recall (sensitivity)", "precision"),
        "lower left",
        "Precision-recall",
    ),
}


def _plot_curves(kind: str, curves: Mapping[str, tuple[Any, Any]], ax: Axes | None) -> Figure:
    """Several models' curves on one axis, each with its score (4 decimals), chance drawn once."""
    display, score, short, (xlabel, ylabel), loc, title = _CURVES[kind]
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict {model name: (y_true, y_prob)}")
    data = []
    for name, pair in curves.items():  # all checked before drawing, so a bad one is named
        try:
            yt, yp = validate_binary(*pair)
            require_both_classes(yt)
        except (TypeError, ValueError) as err:
            raise ValueError(f"curve {name!r}: {err}") from err
        data.append((name, yt, yp))
    fig, ax = _axes(ax, (5.5, 5))
    for k, (name, yt, yp) in enumerate(data):
        chance = "chance" if kind == "roc" else f"chance (prevalence {yt.mean():.2f})"
        display.from_predictions(
            yt,
            yp,
            ax=ax,
            curve_kwargs={"label": f"{name} ({short} = {score(yt, yp):.4f})"},
            plot_chance_level=k == len(data) - 1,
            chance_level_kw={"label": chance},
        )
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc=loc, fontsize=8)
    return fig


def plot_roc(curves: Mapping[str, tuple[Any, Any]], ax: Axes | None = None) -> Figure:
    """ROC curves of several models on one axis, AUC (the Kaggle metric) in the legend."""
    return _plot_curves("roc", curves, ax)


def plot_pr(curves: Mapping[str, tuple[Any, Any]], ax: Axes | None = None) -> Figure:
    """Precision-recall curves (average precision in the legend): shows the positive-class cost."""
    return _plot_curves("pr", curves, ax)


def plot_confusion(
    y_true: Any, y_prob: Any, threshold: float = 0.5, ax: Axes | None = None
) -> Figure:
    """Confusion matrix at a threshold, with counts and per-true-class percentages."""
    yt, yp = validate_binary(y_true, y_prob)
    cm = skm.confusion_matrix(yt, (yp >= threshold).astype(int), labels=[0, 1])
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    fig, ax = _axes(ax, (4.8, 4.2))
    display = skm.ConfusionMatrixDisplay(frac, display_labels=CLASS_NAMES)
    display.plot(ax=ax, cmap="Blues", colorbar=False, im_kw={"vmin": 0, "vmax": 1})
    for (i, j), text in np.ndenumerate(display.text_):
        text.set_text(f"{cm[i, j]:,}\n{100 * frac[i, j]:.1f}%")
    ax.set_title(f"Confusion matrix (p ≥ {threshold:g} → tumour)")
    return fig


def plot_reliability(y_true: Any, y_prob: Any, n_bins: int = 10, ax: Axes | None = None) -> Figure:
    """Reliability diagram: observed tumour rate vs mean p per bin, ECE in the title.

    The bars behind the curve count the patches in each bin.
    """
    ece = expected_calibration_error(y_true, y_prob, n_bins)
    yt, yp = validate_binary(y_true, y_prob)
    fig, ax = _axes(ax, (5.5, 5))
    counts = ax.twinx()
    counts.hist(yp, bins=n_bins, range=(0, 1), color="0.85", edgecolor="0.6")
    counts.set_ylabel("patches per bin")
    ax.set_zorder(counts.get_zorder() + 1)  # the curve in front of the bars
    ax.patch.set_visible(False)
    CalibrationDisplay.from_predictions(yt, yp, n_bins=n_bins, ax=ax, name="model")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="predicted tumour probability")
    ax.set(ylabel="fraction tumour", title=f"Reliability (ECE = {ece:.4f}, {n_bins} bins)")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def plot_prob_hist(
    y_true: Any,
    y_prob: Any,
    *,
    bins: int = 50,
    threshold: float | None = 0.5,
    log: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Predicted-probability histograms per true class: how well and how surely it separates."""
    yt, yp = validate_binary(y_true, y_prob)
    fig, ax = _axes(ax, (6, 4))
    edges = np.linspace(0, 1, bins + 1)
    sns.histplot(x=yp, hue=np.take(CLASS_NAMES, yt), bins=edges, ax=ax, **_STEPS, **_BY_CLASS)
    if log:
        ax.set_yscale("log")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1)
    ax.set(xlabel="predicted tumour probability", ylabel="patches")
    ax.set_title("Predicted probability by true class")
    return fig
