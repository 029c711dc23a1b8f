"""Pictures of patches: grids with the labelled centre box, confident errors, Grad-CAM overlays.

PCam labels a patch by its centre 32×32 pixels only, so every patch is drawn with that box.
``pcamlib.plots`` re-exports these functions; charts of numbers live there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .checks import labels01
from .metrics import validate_binary

__all__ = ["CENTRE", "plot_confident_errors", "plot_gradcam", "plot_patch_grid"]

CENTRE = 32  # PCam labels only the centre 32x32 px of each 96x96 patch.


def patches_at(images: Any, idx: Sequence[int] | np.ndarray) -> np.ndarray:
    """The patches at ``idx`` only (works for arrays, memmaps and simple indexables)."""
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


def _draw_centre_box(ax: Axes, h: int, w: int, size: int = CENTRE, color: str = "lime") -> None:
    """Outline the centre ``size`` px square (pixels 32..63 of a 96 px patch) that is labelled."""
    if h < size or w < size:
        return
    top, left = (h - size) // 2, (w - size) // 2
    ax.add_patch(
        Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor=color, linewidth=1.0)
    )


def _show_patch(
    ax: Axes, img: np.ndarray, centre_box: bool = True, caption: str = "", fontsize: float = 7
) -> None:
    """One patch without ticks, optionally with the labelled centre region outlined."""
    ax.imshow(
        img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None
    )
    if centre_box:
        _draw_centre_box(ax, img.shape[0], img.shape[1])
    ax.set_axis_off()
    if caption:
        ax.set_title(caption, fontsize=fontsize, pad=2)


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


def _rows(n: int, **arrays: Any) -> None:
    """Every given per-patch array has one row per patch."""
    for name, arr in arrays.items():
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows but images has {n}")


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
    y = None if labels is None else labels01(labels)
    p = None if probs is None else np.asarray(probs, dtype=np.float64).reshape(-1)
    _rows(total, labels=y, probs=p)
    imgs = patches_at(images, np.arange(m))
    fig, axes = _grid(m, ncols, extra_h=0.6 if title else 0.3)
    for i, ax in enumerate(axes.flat[:m]):
        parts = [f"y={y[i]}" if y is not None else "", f"p={p[i]:.2f}" if p is not None else ""]
        _show_patch(ax, imgs[i], centre_box, " ".join(s for s in parts if s))
        if y is not None and p is not None:
            ax.title.set_color("green" if int(p[i] >= 0.5) == y[i] else "red")
    if title:
        fig.suptitle(title)
    fig.tight_layout(pad=0.3)
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
    _rows(len(images), y_true=yt)
    fp = np.flatnonzero((yt == 0) & (yp >= threshold))
    fn = np.flatnonzero((yt == 1) & (yp < threshold))
    groups = [
        (
            f"Most confident false positives (normal, p ≥ {threshold:g})",
            fp[np.argsort(-yp[fp], kind="stable")],
        ),
        (
            f"Most confident false negatives (tumour, p < {threshold:g})",
            fn[np.argsort(yp[fn], kind="stable")],
        ),
    ]
    cols = max(1, min(ncols, n))
    rows = max(1, math.ceil(n / cols))
    fig = plt.figure(figsize=(cols * 1.7, 2 * (rows * 1.8 + 0.6)))
    for sub, (label, idx) in zip(fig.subfigures(2, 1), groups, strict=True):
        sub.suptitle(f"{label}: showing {min(n, len(idx))} of {len(idx)}", fontsize=12)
        axes = sub.subplots(rows, cols, squeeze=False)
        shown = idx[:n]
        imgs = patches_at(images, shown)
        for k, ax in enumerate(axes.flat):
            if k < len(shown):
                _show_patch(ax, imgs[k], True, f"#{shown[k]} p={yp[shown[k]]:.3f}", fontsize=10)
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
    y = None if labels is None else labels01(labels)
    _rows(n, probs=p, labels=y)
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
