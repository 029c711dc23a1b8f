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

from .metrics import validate_binary
from .sources import labels01

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


def grid(
    n: int,
    ncols: int,
    cell: tuple[float, float],
    extra_h: float = 0.0,
    figsize: tuple[float, float] | None = None,
) -> tuple[Figure, np.ndarray]:
    """A figure with ``n`` axes in rows of at most ``ncols`` cells; the spare axes are hidden."""
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    size = figsize or (ncols * cell[0], nrows * cell[1] + extra_h)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


def _draw_centre_box(ax: Axes, h: int, w: int, color: str = "lime") -> None:
    """Outline the labelled centre square (pixels 32..63 of a 96 px patch)."""
    if h >= CENTRE and w >= CENTRE:
        xy = ((w - CENTRE) // 2 - 0.5, (h - CENTRE) // 2 - 0.5)
        ax.add_patch(Rectangle(xy, CENTRE, CENTRE, fill=False, edgecolor=color, linewidth=1.0))


def _show_patch(
    ax: Axes, img: np.ndarray, centre_box: bool = True, caption: str = "", fontsize: float = 7
) -> None:
    """One patch without ticks, optionally with the labelled centre region outlined."""
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")  # RGB ignores cmap
    if centre_box:
        _draw_centre_box(ax, *img.shape[:2])
    ax.set_axis_off()
    if caption:
        ax.set_title(caption, fontsize=fontsize, pad=2)


def _caption(i: int, y: np.ndarray | None, p: np.ndarray | None) -> str:
    """``y=1 p=0.93`` for whichever of label and probability is known."""
    parts = [f"y={y[i]}" if y is not None else "", f"p={p[i]:.2f}" if p is not None else ""]
    return " ".join(s for s in parts if s)


def _captions_data(n: int, labels: Any, probs: Any) -> tuple[np.ndarray | None, ...]:
    """Labels and probabilities as arrays (or None), each with one row per image."""
    y = None if labels is None else labels01(labels)
    p = None if probs is None else np.asarray(probs, dtype=np.float64).reshape(-1)
    for name, arr in (("labels", y), ("probs", p)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows but images has {n}")
    return y, p


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
    m = min(int(n), len(images))
    if m < 1:
        raise ValueError("no images to plot")
    y, p = _captions_data(len(images), labels, probs)
    imgs = patches_at(images, np.arange(m))
    fig, axes = grid(m, ncols, (1.25, 1.25), extra_h=0.6 if title else 0.3)
    for i, ax in enumerate(axes.flat[:m]):
        _show_patch(ax, imgs[i], centre_box, _caption(i, y, p))
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
    if len(yt) != len(images):
        raise ValueError(f"y_true has {len(yt)} rows but images has {len(images)}")
    fp = np.flatnonzero((yt == 0) & (yp >= threshold))
    fn = np.flatnonzero((yt == 1) & (yp < threshold))
    groups = [
        (f"false positives (normal, p ≥ {threshold:g})", fp[np.argsort(-yp[fp], kind="stable")]),
        (f"false negatives (tumour, p < {threshold:g})", fn[np.argsort(yp[fn], kind="stable")]),
    ]
    cols = max(1, min(ncols, n))
    rows = max(1, math.ceil(n / cols))
    fig = plt.figure(figsize=(cols * 1.7, 2 * (rows * 1.8 + 0.6)))
    for sub, (label, idx) in zip(fig.subfigures(2, 1), groups, strict=True):
        shown = idx[:n]
        sub.suptitle(f"Most confident {label}: showing {len(shown)} of {len(idx)}", fontsize=12)
        axes = sub.subplots(rows, cols, squeeze=False)
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
    if imgs.ndim != 4 or imgs.shape[:3] != heat.shape:
        raise ValueError(
            f"heatmaps {heat.shape} do not match images {imgs.shape}: "
            "expected images (N, H, W, C) and heatmaps (N, H, W)"
        )
    if not np.isfinite(heat).all():
        raise ValueError("heatmaps contain non-finite values")
    y, p = _captions_data(len(imgs), labels, probs)
    per = 2 if pairs else 1
    fig, axes = grid(len(imgs) * per, ncols * per, (1.6, 1.6), extra_h=0.4)
    for i, img in enumerate(imgs):
        if pairs:
            _show_patch(axes.flat[2 * i], img, True, _caption(i, y, p))
        ax = axes.flat[per * i + per - 1]
        _show_patch(ax, img, False, "" if pairs else _caption(i, y, p))
        shown = ax.imshow(heat[i], cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        _draw_centre_box(ax, *heat.shape[1:], color="white")
    fig.tight_layout(pad=0.3)
    if len(imgs):  # one scale for every map: each is divided by its own maximum
        fig.subplots_adjust(right=0.93)
        bar = fig.colorbar(shown, cax=fig.add_axes((0.945, 0.15, 0.01, 0.7), label="colorbar"))
        bar.set_label("Grad-CAM (÷ its max)")
    return fig
