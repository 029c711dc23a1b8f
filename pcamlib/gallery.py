"""Pictures of patches: grids with the labelled centre box, confident errors, Grad-CAM.

PCam labels a patch by its centre 32×32 pixels only, so every patch is drawn with that box.
Grad-CAM is keras-io's recipe (``examples/vision/grad_cam.py``), batched and resized, on
TensorFlow or JAX: the gradient of the tumour logit is the only per-backend step.
"""

import math
from collections.abc import Callable
from typing import Any

import keras
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .metrics import validate_binary
from .plots import grid
from .sources import labels01

CENTRE = 32  # PCam labels only the centre 32x32 px of each 96x96 patch.
BATCH = 32  # Grad-CAM images per gradient step
# Layers whose 4-D output is not a learned feature map worth explaining.
_SKIP = ("pooling", "regularization", "preprocessing", "input_layer", "reshaping")


def _show_patch(ax: Axes, img: np.ndarray, caption: str, box="lime", fontsize=7.0) -> None:
    """One patch without ticks, its labelled centre (pixels 32..63 of 96) outlined in ``box``."""
    ax.imshow(img)
    ax.set_axis_off()
    h, w = img.shape[:2]
    xy = ((w - CENTRE) // 2 - 0.5, (h - CENTRE) // 2 - 0.5)
    ax.add_patch(Rectangle(xy, CENTRE, CENTRE, fill=False, edgecolor=box, linewidth=1.0))
    if caption:
        ax.set_title(caption, fontsize=fontsize, pad=2)


def _captions(n: int, labels: Any, probs: Any) -> tuple[np.ndarray | None, Any, list[str]]:
    """Labels and probabilities (or None), one row per image, and captions ``y=1 p=0.93``."""
    y = None if labels is None else labels01(labels)
    p = None if probs is None else np.asarray(probs, dtype=np.float64).reshape(-1)
    for name, arr in (("labels", y), ("probs", p)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows but images has {n}")
    ys = [f"y={v}" for v in y] if y is not None else [""] * n
    ps = [f"p={v:.2f}" for v in p] if p is not None else [""] * n
    return y, p, [f"{a} {b}".strip() for a, b in zip(ys, ps, strict=True)]


def plot_patch_grid(
    images: Any, labels: Any = None, probs: Any = None, n: int = 100, title: str | None = None
) -> Figure:
    """The first ``n`` patches, 10 a row, centre outlined, label and probability as captions:
    green when the 0.5-thresholded probability matches the label, red otherwise."""
    m = min(int(n), len(images))
    if m < 1:
        raise ValueError("no images to plot")
    y, p, captions = _captions(len(images), labels, probs)
    imgs = np.asarray(images[:m])
    fig, axes = grid(m, 10, (1.25, 1.25), extra_h=0.6 if title else 0.3)
    for i, ax in enumerate(axes.flat[:m]):
        _show_patch(ax, imgs[i], captions[i])
        if y is not None and p is not None:
            ax.title.set_color("green" if int(p[i] >= 0.5) == y[i] else "red")
    if title:
        fig.suptitle(title)
    fig.tight_layout(pad=0.3)
    return fig


def plot_confident_errors(
    images: Any, y_true: Any, y_prob: Any, n: int = 16, *, threshold: float = 0.5
) -> Figure:
    """The ``n`` most confident false positives and false negatives, 8 a row: what fools it."""
    yt, yp = validate_binary(y_true, y_prob)
    if len(yt) != len(images):
        raise ValueError(f"y_true has {len(yt)} rows but images has {len(images)}")
    fp = np.flatnonzero((yt == 0) & (yp >= threshold))
    fn = np.flatnonzero((yt == 1) & (yp < threshold))
    groups = [
        (f"false positives (normal, p ≥ {threshold:g})", fp[np.argsort(-yp[fp], kind="stable")]),
        (f"false negatives (tumour, p < {threshold:g})", fn[np.argsort(yp[fn], kind="stable")]),
    ]
    cols = max(1, min(8, n))
    rows = max(1, math.ceil(n / cols))
    fig = plt.figure(figsize=(cols * 1.7, 2 * (rows * 1.8 + 0.6)))
    for sub, (label, idx) in zip(fig.subfigures(2, 1), groups, strict=True):
        shown = idx[:n]
        sub.suptitle(f"Most confident {label}: showing {len(shown)} of {len(idx)}", fontsize=12)
        axes = sub.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, i in zip(axes, shown, strict=False):
            _show_patch(ax, np.asarray(images[int(i)]), f"#{i} p={yp[i]:.3f}", fontsize=10)
        if not len(shown):
            axes[0].text(0, 0.5, "none", fontsize=12)
    return fig


def plot_gradcam(images: Any, heatmaps: Any, probs: Any = None, labels: Any = None) -> Figure:
    """Each patch (centre 32x32 outlined) beside its Grad-CAM heat-map overlay, 4 pairs a row."""
    imgs = np.asarray(images)
    heat = np.asarray(heatmaps, dtype=np.float32)
    if imgs.ndim != 4 or imgs.shape[:3] != heat.shape:
        raise ValueError(f"heatmaps {heat.shape} do not match images (N, H, W, C) {imgs.shape}")
    if not np.isfinite(heat).all():
        raise ValueError("heatmaps contain non-finite values")
    captions = _captions(len(imgs), labels, probs)[2]
    fig, axes = grid(len(imgs) * 2, 8, (1.6, 1.6), extra_h=0.4)
    for i, img in enumerate(imgs):
        _show_patch(axes.flat[2 * i], img, captions[i])
        _show_patch(axes.flat[2 * i + 1], img, "", box="white")  # patches draw over images
        shown = axes.flat[2 * i + 1].imshow(heat[i], cmap="jet", alpha=0.4, vmin=0, vmax=1)
    fig.tight_layout(pad=0.3)
    if len(imgs):  # one scale for every map: each is divided by its own maximum
        fig.subplots_adjust(right=0.93)
        bar = fig.colorbar(shown, cax=fig.add_axes((0.945, 0.15, 0.01, 0.7), label="colorbar"))
        bar.set_label("Grad-CAM (÷ its max)")
    return fig


def find_target_layer(model: keras.Model, layer_name: str | None = None) -> str:
    """The feature map Grad-CAM uses: ``layer_name`` checked, else the last 4-D output that is
    not pooling, dropout, reshaping, preprocessing or a nested model (pcamlib's models are flat)."""
    if getattr(model, "inputs", None) is None:
        raise ValueError(f"gradcam needs a Sequential or functional model; got {type(model)}")
    if layer_name is not None:
        if layer_name not in {layer.name for layer in model.layers}:
            raise ValueError(f"no layer named {layer_name!r} in model {model.name!r}")
        if len(getattr(model.get_layer(layer_name).output, "shape", ())) != 4:
            raise ValueError(f"layer {layer_name!r} does not output a 4-D (N, h, w, C) feature map")
        return layer_name
    for layer in reversed(model.layers):
        skip = isinstance(layer, keras.Model) or any(s in type(layer).__module__ for s in _SKIP)
        if len(getattr(layer.output, "shape", ())) == 4 and not skip:  # 0 for a list
            return layer.name
    raise ValueError("model has no convolutional layer to explain; pass layer_name=")


def _cut(model: keras.Model, layer_name: str) -> tuple[keras.Model, Callable[[Any], Any]]:
    """``features`` (input → feature map) and ``head`` (feature map → tumour logit, as a
    saturated sigmoid, p = 1.0 in float32, has no gradient)."""
    feature_map = model.get_layer(layer_name).output
    names = {layer.name for layer in model.layers}
    score = model.get_layer("tumor_logit").output if "tumor_logit" in names else model.outputs[0]
    try:
        head = keras.Model(feature_map, score)
    except ValueError:  # the rest of the model also needs the input
        raise ValueError(
            f"cannot cut the model at {layer_name!r}: it is not on every path from the input to "
            "the output (pick a block output: conv5_block3_out, not conv5_block3_2_conv)"
        ) from None
    return keras.Model(model.inputs[0], feature_map), lambda f: head(f, training=False)


def _gradient(head: Callable[[Any], Any], feat: Any) -> Any:
    """d sum(head(feat)) / d feat: the one step Keras has no backend-neutral API for."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(feat)
            total = tf.reduce_sum(tf.cast(head(feat), "float32"))
        return tape.gradient(total, feat)
    if backend == "jax":
        import jax

        return jax.grad(lambda f: head(f).astype("float32").sum())(feat)
    raise ValueError(f"gradcam supports the tensorflow and jax Keras backends; this is {backend!r}")


def _field_of_view(model: keras.Model, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the input the network sees: PCamNet's centre crop."""
    top, left, (h, w) = 0, 0, size
    for layer in model.layers:
        if isinstance(layer, keras.layers.CenterCrop):
            ch, cw = min(layer.height, h), min(layer.width, w)
            top, left, h, w = top + (h - ch) // 2, left + (w - cw) // 2, ch, cw
    return top, left, h, w


def _cam_batch(model, features, head, x: np.ndarray, start: int) -> np.ndarray:
    """Grad-CAM maps of one batch, resized onto the field of view, each divided by its max."""
    feat = features(x, training=False)
    grads = keras.ops.convert_to_numpy(_gradient(head, feat)).astype(np.float32)
    feat = keras.ops.convert_to_numpy(feat).astype(np.float32)
    bad = ~(np.isfinite(feat).all(axis=(1, 2, 3)) & np.isfinite(grads).all(axis=(1, 2, 3)))
    if bad.any():
        raise ValueError(f"non-finite feature map or gradient for image {start + np.argmax(bad)}")
    cam = np.maximum((grads.mean(axis=(1, 2), keepdims=True) * feat).sum(axis=-1), 0.0)
    top, left, h, w = _field_of_view(model, x.shape[1:3])
    big = keras.ops.image.resize(cam[..., None], (h, w), interpolation="bilinear")
    out = np.zeros(x.shape[:3], np.float32)  # zero where a centre crop hides the pixels
    out[:, top : top + h, left : left + w] = np.maximum(keras.ops.convert_to_numpy(big)[..., 0], 0)
    peak = out.max(axis=(1, 2), keepdims=True)
    return out / np.where(peak > 0, peak, 1.0)  # a map with no evidence stays zero


def gradcam(model: keras.Model, images: Any, *, layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] at input resolution for the tumour logit, on the feature
    map ``layer_name`` or the one :func:`find_target_layer` picks.

    Examples:
        >>> heat = gradcam(model, images[:8])
        >>> fig = plot_gradcam(images[:8], heat, probs=probs[:8])
    """
    features, head = _cut(model, find_target_layer(model, layer_name))
    chunks = []
    for start in range(0, len(images), BATCH):
        x = np.asarray(images[start : start + BATCH])
        if x.ndim != 4:
            raise ValueError(f"images must be NHWC; images[{start}:] has shape {x.shape}")
        chunks.append(_cam_batch(model, features, head, x, start))
    return np.concatenate(chunks) if chunks else np.zeros((0, *np.shape(images)[1:3]), np.float32)
