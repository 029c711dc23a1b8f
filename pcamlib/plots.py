"""Figures for EDA, training curves and evaluation from plain arrays, so notebooks stay thin."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn import metrics as skm

from .metrics import (
    calibration_bins,
    expected_calibration_error,
    require_both_classes,
    validate_binary,
)

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
CENTRE = 32  # PCam labels only the centre 32x32 px of each 96x96 patch.
_IGNORED_HISTORY = {"epoch", "lr", "learning_rate"}


# --------------------------------------------------------------------------- helpers


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """Draw on the caller's axes when given, else on a fresh figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return _root(ax), ax


def _root(ax: Axes) -> Figure:
    """The top-level figure of an axes, even inside a subfigure."""
    try:
        return ax.get_figure(root=True)
    except TypeError:  # matplotlib < 3.10
        return ax.figure


def _labels01(labels: Any, name: str = "labels") -> np.ndarray:
    """0/1 labels as int, with the first bad row named."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array; got shape {y.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    bad = ~np.isin(y, (0, 1)) if np.issubdtype(y.dtype, np.number) else np.ones(len(y), bool)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must be 0/1; row {i} is {y[i]!r} ({int(bad.sum())} bad rows)")
    return y.astype(np.int64)


def _class_names(y: np.ndarray) -> np.ndarray:
    """Readable class names for seaborn hue/x."""
    return np.where(y == 1, CLASS_NAMES[1], CLASS_NAMES[0])


def _images(images: Any, idx: Sequence[int] | np.ndarray) -> np.ndarray:
    """Fetch only the requested patches (works for arrays, memmaps and simple indexables)."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(images, np.ndarray):
        out = np.asarray(images[idx])
    elif len(idx):
        out = np.stack([np.asarray(images[int(i)]) for i in idx])
    else:
        out = np.zeros((0, 1, 1, 3), np.uint8)
    if out.ndim != 4:
        raise ValueError(f"images must be NHWC; got patches of shape {out.shape[1:]}")
    return out


def _show_patch(ax: Axes, img: np.ndarray, centre_box: bool = True, caption: str = "") -> None:
    """One patch without ticks, optionally with the labelled centre region outlined."""
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray")
    else:
        ax.imshow(img)
    if centre_box:
        _draw_centre_box(ax, img.shape[0], img.shape[1])
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if caption:
        ax.set_title(caption, fontsize=7, pad=2)


def _draw_centre_box(ax: Axes, h: int, w: int, size: int = CENTRE, color: str = "lime") -> None:
    """Outline the centre ``size`` px square (pixels 32..63 of a 96 px patch) that is labelled."""
    if h < size or w < size:
        return
    top, left = (h - size) // 2, (w - size) // 2
    ax.add_patch(
        Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor=color, linewidth=1.0)
    )


def _grid(
    n: int, ncols: int, cell: float = 1.25, extra_h: float = 0.4
) -> tuple[Figure, np.ndarray]:
    """A figure with an n-cell grid of image axes."""
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * cell, nrows * cell + extra_h), squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


# --------------------------------------------------------------------------- training curves


def _history_frame(history: Any) -> pd.DataFrame:
    """Accept a CSVLogger frame, a dict of lists, or anything with a ``.history`` dict."""
    data = getattr(history, "history", history)
    frame = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    if frame.empty:
        raise ValueError("history is empty: no epochs to plot")
    return frame


def _metric_order(name: str) -> tuple[int, str]:
    """Loss first, then accuracy, then AUC, then anything else alphabetically."""
    low = name.lower()
    if low == "loss":
        return 0, low
    if "acc" in low:
        return 1, low
    if "auc" in low:
        return 2, low
    return 3, low


def _pretty(name: str) -> str:
    """Human panel titles for the usual Keras metric names."""
    low = name.lower()
    if low == "loss":
        return "Loss"
    if low in ("accuracy", "acc", "binary_accuracy"):
        return "Accuracy"
    if low.startswith("auc"):
        return "ROC AUC"
    if low.startswith("pr_auc"):
        return "PR AUC"
    return name.replace("_", " ")


def plot_history(history: Any, *, figsize: tuple[float, float] | None = None) -> Figure:
    """Train vs validation curves per metric, with the best-validation-AUC epoch marked.

    Epochs are shown 1-based (CSVLogger's 0-based ``epoch`` column is shifted; pcamlib's
    history.csv is already 1-based). Without a validation AUC the marker falls back to the
    lowest ``val_loss``.
    """
    frame = _history_frame(history)
    if "epoch" in frame:  # CSVLogger counts from 0, pcamlib's history.csv from 1
        epochs = frame["epoch"].to_numpy()
        epochs = epochs + 1 if len(epochs) and epochs.min() == 0 else epochs
    else:
        epochs = np.arange(1, len(frame) + 1)
    numeric = [
        c
        for c in frame.columns
        if c not in _IGNORED_HISTORY and pd.api.types.is_numeric_dtype(frame[c])
    ]
    bases = sorted({c[4:] if c.startswith("val_") else c for c in numeric}, key=_metric_order)
    lr_col = next((c for c in ("learning_rate", "lr") if c in frame), None)
    panels: list[str] = bases + ([lr_col] if lr_col else [])
    if not panels:
        raise ValueError(
            f"history has no numeric metric columns; columns are {list(frame.columns)}"
        )

    best_epoch, best_label, best_base, best_i = None, "", None, 0
    val_auc = next((b for b in bases if b.lower().startswith("auc") and f"val_{b}" in frame), None)
    if val_auc is not None and frame[f"val_{val_auc}"].notna().any():
        i = best_i = int(np.nanargmax(frame[f"val_{val_auc}"].to_numpy()))
        best_epoch, best_base = epochs[i], val_auc
        best_label = f"best val AUC {frame[f'val_{val_auc}'].iloc[i]:.4f} @ epoch {epochs[i]}"
    elif "val_loss" in frame and frame["val_loss"].notna().any():
        i = best_i = int(np.nanargmin(frame["val_loss"].to_numpy()))
        best_epoch, best_base = epochs[i], "loss"
        best_label = f"best val loss {frame['val_loss'].iloc[i]:.4f} @ epoch {epochs[i]}"

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=figsize or (5 * ncols, 3.6 * nrows), squeeze=False
    )
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, base in zip(axes.flat, panels, strict=False):
        if base == lr_col:
            ax.plot(epochs, frame[base], color="grey", marker=".")
            ax.set_yscale("log")
            ax.set_title("Learning rate")
        else:
            if base in frame:
                ax.plot(epochs, frame[base], marker=".", label="train")
            if f"val_{base}" in frame:
                ax.plot(epochs, frame[f"val_{base}"], marker=".", label="validation")
            ax.set_title(_pretty(base))
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.5", linestyle="--", linewidth=1)
            if base == best_base:
                y = frame[f"val_{base}"].iloc[best_i]
                ax.plot(
                    [best_epoch],
                    [y],
                    marker="*",
                    markersize=14,
                    color="gold",
                    markeredgecolor="k",
                    linestyle="none",
                    label=best_label,
                )
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Training history" + (f" - {best_label}" if best_label else ""))
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- EDA


def plot_label_balance(labels: Any, ax: Axes | None = None) -> Figure:
    """Class counts with percentages, to see the imbalance before choosing metrics and splits."""
    y = _labels01(labels)
    names = _class_names(y)
    fig, ax = _axes(ax, (5, 4))
    sns.countplot(
        x=names,
        hue=names,
        order=CLASS_NAMES,
        hue_order=CLASS_NAMES,
        palette=PALETTE,
        legend=False,
        ax=ax,
    )
    counts = [int((y == 0).sum()), int((y == 1).sum())]
    for i, c in enumerate(counts):
        ax.text(i, c, f"{c:,}\n({100 * c / len(y):.1f}%)", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(counts) * 1.18)
    ax.set_xlabel("class")
    ax.set_ylabel("patches")
    ax.set_title(f"Label balance (n = {len(y):,})")
    return fig


def plot_patch_grid(
    images: Any,
    labels: Any = None,
    probs: Any = None,
    n: int = 100,
    ncols: int = 10,
    centre_box: bool = True,
    title: str | None = None,
) -> Figure:
    """The first ``n`` patches, labelled centre 32x32 outlined, label/probability as captions.

    Captions are green when the 0.5-thresholded probability matches the label, red otherwise.
    """
    total = len(images)
    m = min(int(n), total)
    if m < 1:
        raise ValueError("no images to plot")
    y = None if labels is None else _labels01(labels)
    p = None if probs is None else np.asarray(probs, dtype=np.float64).reshape(-1)
    for name, arr in (("labels", y), ("probs", p)):
        if arr is not None and len(arr) != total:
            raise ValueError(f"{name} has {len(arr)} rows but images has {total}")
    imgs = _images(images, np.arange(m))
    fig, axes = _grid(m, ncols, extra_h=0.6 if title else 0.3)
    for i, ax in enumerate(axes.flat[:m]):
        parts = []
        if y is not None:
            parts.append(f"y={y[i]}")
        if p is not None:
            parts.append(f"p={p[i]:.2f}")
        _show_patch(ax, imgs[i], centre_box, " ".join(parts))
        if y is not None and p is not None:
            ax.title.set_color("green" if int(p[i] >= 0.5) == y[i] else "red")
    if title:
        fig.suptitle(title)
    fig.tight_layout(pad=0.3)
    return fig


def plot_channel_stats(
    images: Any,
    labels: Any,
    *,
    max_images: int = 5000,
    seed: int = 0,
    batch_size: int = 1024,
) -> Figure:
    """Per-class distributions of each image's mean R, G, B intensity (stain/brightness EDA).

    At most ``max_images`` patches (a seeded random subset) are read, in batches.
    """
    y = _labels01(labels)
    if len(y) != len(images):
        raise ValueError(f"labels has {len(y)} rows but images has {len(images)}")
    idx = np.arange(len(y))
    if len(idx) > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_images, replace=False))
    means = []
    for s in range(0, len(idx), batch_size):
        chunk = _images(images, idx[s : s + batch_size]).astype(np.float32)
        means.append(chunk.mean(axis=(1, 2)))
    chan = np.concatenate(means)
    n_ch = chan.shape[1]
    names = ["red", "green", "blue"] if n_ch == 3 else [f"channel {c}" for c in range(n_ch)]
    frame = pd.DataFrame(chan, columns=names)
    frame["class"] = _class_names(y[idx])
    fig, axes = plt.subplots(1, n_ch, figsize=(4.5 * n_ch, 3.6), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=True):
        sns.histplot(
            data=frame,
            x=name,
            hue="class",
            hue_order=CLASS_NAMES,
            palette=PALETTE,
            bins=50,
            stat="density",
            common_norm=False,
            element="step",
            ax=ax,
        )
        ax.set_xlabel(f"mean {name} intensity per patch")
        ax.set_title(name.capitalize())
    fig.suptitle(f"Per-class channel intensity (n = {len(idx):,} patches)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- evaluation


def _curves(curves: Mapping[str, tuple[Any, Any]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Validate every (y_true, y_prob) pair up front so a bad model name is reported."""
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict {model name: (y_true, y_prob)}")
    out = []
    for name, pair in curves.items():
        try:
            yt, yp = validate_binary(*pair)
            require_both_classes(yt)
        except (TypeError, ValueError) as err:
            raise ValueError(f"curve {name!r}: {err}") from err
        out.append((str(name), yt, yp))
    return out


def plot_roc(curves: Mapping[str, tuple[Any, Any]], ax: Axes | None = None) -> Figure:
    """ROC curves of several models on one axis, AUC (the Kaggle metric) in the legend."""
    data = _curves(curves)
    fig, ax = _axes(ax, (5.5, 5))
    for name, yt, yp in data:
        fpr, tpr, _ = skm.roc_curve(yt, yp)
        ax.plot(fpr, tpr, label=f"{name} (AUC = {skm.roc_auc_score(yt, yp):.4f})")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("ROC")
    return fig


def plot_pr(curves: Mapping[str, tuple[Any, Any]], ax: Axes | None = None) -> Figure:
    """Precision-recall curves (average precision in the legend): shows the positive-class cost."""
    data = _curves(curves)
    fig, ax = _axes(ax, (5.5, 5))
    for name, yt, yp in data:
        precision, recall, _ = skm.precision_recall_curve(yt, yp)
        ap = skm.average_precision_score(yt, yp)
        ax.plot(recall, precision, drawstyle="steps-post", label=f"{name} (AP = {ap:.4f})")
    prevalence = data[0][1].mean()
    ax.axhline(
        prevalence,
        color="0.6",
        linestyle="--",
        linewidth=1,
        label=f"chance (prevalence {prevalence:.2f})",
    )
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Precision-recall")
    return fig


def plot_confusion(
    y_true: Any, y_prob: Any, threshold: float = 0.5, ax: Axes | None = None
) -> Figure:
    """Confusion matrix at a threshold, with counts and per-true-class percentages."""
    yt, yp = validate_binary(y_true, y_prob)
    cm = skm.confusion_matrix(yt, (yp >= threshold).astype(int), labels=[0, 1])
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    annot = np.array(
        [[f"{cm[i, j]:,}\n{100 * frac[i, j]:.1f}%" for j in range(2)] for i in range(2)]
    )
    fig, ax = _axes(ax, (4.8, 4.2))
    sns.heatmap(
        frac,
        annot=annot,
        fmt="",
        cmap="Blues",
        vmin=0,
        vmax=1,
        cbar=False,
        xticklabels=CLASS_NAMES,
        yticklabels=CLASS_NAMES,
        square=True,
        ax=ax,
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (p >= {threshold:g} -> tumour)")
    return fig


def plot_reliability(y_true: Any, y_prob: Any, n_bins: int = 10, ax: Axes | None = None) -> Figure:
    """Reliability diagram (observed tumour rate vs predicted probability) with ECE in the title."""
    bins = calibration_bins(y_true, y_prob, n_bins)
    ece = expected_calibration_error(y_true, y_prob, n_bins)
    edges, count = bins["edges"], bins["count"]
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = _axes(ax, (5.5, 5))
    filled = count > 0
    ax.bar(
        centres[filled],
        bins["frac_pos"][filled],
        width=np.diff(edges)[filled],
        edgecolor="k",
        alpha=0.6,
        label="observed tumour rate",
    )
    ax.plot(
        bins["mean_prob"][filled],
        bins["frac_pos"][filled],
        "o-",
        color="C3",
        label="(mean p, observed) per bin",
    )
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="perfect calibration")
    for c, n_b in zip(centres, count, strict=True):
        ax.text(c, 0.01, f"{n_b:,}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("predicted tumour probability")
    ax.set_ylabel("fraction tumour")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"Reliability (ECE = {ece:.4f}, {n_bins} bins)")
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
    sns.histplot(
        x=yp,
        hue=_class_names(yt),
        hue_order=CLASS_NAMES,
        palette=PALETTE,
        bins=np.linspace(0, 1, bins + 1),
        element="step",
        common_norm=False,
        ax=ax,
    )
    if log:
        ax.set_yscale("log")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("predicted tumour probability")
    ax.set_ylabel("patches")
    ax.set_title("Predicted probability by true class")
    return fig


def plot_confident_errors(
    images: Any,
    y_true: Any,
    y_prob: Any,
    n: int = 16,
    *,
    threshold: float = 0.5,
    ncols: int = 8,
) -> Figure:
    """The ``n`` most confident false positives and false negatives, to see what fools the model."""
    yt, yp = validate_binary(y_true, y_prob)
    if len(images) != len(yt):
        raise ValueError(f"images has {len(images)} rows but y_true has {len(yt)}")
    fp = np.flatnonzero((yt == 0) & (yp >= threshold))
    fn = np.flatnonzero((yt == 1) & (yp < threshold))
    fp = fp[np.argsort(-yp[fp], kind="stable")]
    fn = fn[np.argsort(yp[fn], kind="stable")]
    groups = [
        (f"Most confident false positives (normal, p >= {threshold:g})", fp),
        (f"Most confident false negatives (tumour, p < {threshold:g})", fn),
    ]
    cols = max(1, min(ncols, n))
    rows = max(1, math.ceil(n / cols))
    fig = plt.figure(figsize=(cols * 1.3, 2 * (rows * 1.3 + 0.5)))
    for sub, (label, idx) in zip(fig.subfigures(2, 1), groups, strict=True):
        sub.suptitle(f"{label}: showing {min(n, len(idx))} of {len(idx)}", fontsize=10)
        axes = sub.subplots(rows, cols, squeeze=False)
        shown = idx[:n]
        imgs = _images(images, shown)
        for k, ax in enumerate(axes.flat):
            if k < len(shown):
                _show_patch(ax, imgs[k], True, f"#{shown[k]} p={yp[shown[k]]:.3f}")
            else:
                ax.axis("off")
        if not len(shown):
            axes.flat[0].text(0, 0.5, "none", fontsize=12)
    return fig


def plot_gradcam(
    images: Any,
    heatmaps: Any,
    probs: Any = None,
    labels: Any = None,
    alpha: float = 0.4,
    *,
    ncols: int = 4,
    cmap: str = "jet",
    pairs: bool = True,
) -> Figure:
    """Grad-CAM heat-maps over their patches, centre 32x32 outlined; ``pairs`` adds the raw one."""
    imgs = np.asarray(images)
    heat = np.asarray(heatmaps, dtype=np.float32)
    if imgs.ndim != 4 or heat.ndim != 3:
        raise ValueError(
            f"expected images (N,H,W,C) and heatmaps (N,H,W); got {imgs.shape}, {heat.shape}"
        )
    if imgs.shape[:3] != heat.shape:
        raise ValueError(f"heatmaps {heat.shape} do not match images {imgs.shape[:3]}")
    if not np.isfinite(heat).all():
        raise ValueError("heatmaps contain non-finite values")
    n = len(imgs)
    p = None if probs is None else np.asarray(probs, dtype=np.float64).reshape(-1)
    y = None if labels is None else _labels01(labels)
    for name, arr in (("probs", p), ("labels", y)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows but images has {n}")
    per = 2 if pairs else 1
    fig, axes = _grid(n * per, ncols * per, cell=1.6)
    flat = axes.flat
    for i in range(n):
        parts = [f"y={y[i]}" if y is not None else "", f"p={p[i]:.2f}" if p is not None else ""]
        caption = " ".join(s for s in parts if s)
        if pairs:
            _show_patch(flat[2 * i], imgs[i], True, caption)
        ax = flat[per * i + per - 1]
        _show_patch(ax, imgs[i], False, "" if pairs else caption)
        ax.imshow(heat[i], cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        _draw_centre_box(ax, *heat.shape[1:], color="white")
    fig.tight_layout(pad=0.3)
    return fig
