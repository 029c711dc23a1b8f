"""Patch pictures, each with the centre 32×32 box PCam labels a patch by, and Grad-CAM: keras-io's
recipe (``examples/vision/grad_cam.py``) batched and resized, on TensorFlow or JAX."""

import keras
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .metrics import labels01, validate_binary
from .plots import grid

CENTRE = 32  # PCam labels only the centre 32x32 px of each 96x96 patch.
BATCH = 32  # Grad-CAM images per gradient step
_SKIP = ("pooling", "regularization", "preprocessing", "input_layer", "reshaping")  # not features


def _show_patch(ax, img: np.ndarray, caption: str, box="lime", fontsize=7.0) -> None:
    """One patch without ticks, its labelled centre (pixels 32..63 of 96) outlined in ``box``."""
    ax.imshow(img)
    ax.set_axis_off()
    xy = ((img.shape[1] - CENTRE) // 2 - 0.5, (img.shape[0] - CENTRE) // 2 - 0.5)
    ax.add_patch(Rectangle(xy, CENTRE, CENTRE, fill=False, edgecolor=box, linewidth=1.0))
    if caption:
        ax.set_title(caption, fontsize=fontsize, pad=2)


def _captions(n: int, labels, probs) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """Labels and probabilities (or None), one row per image, and captions ``y=1 p=0.93``."""
    y = None if labels is None else labels01(labels)
    p = None if probs is None else np.asarray(probs, dtype=np.float64).reshape(-1)
    for name, arr in (("labels", y), ("probs", p)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows but images has {n}")
    ys = [f"y={v}" for v in y] if y is not None else [""] * n
    ps = [f"p={v:.2f}" for v in p] if p is not None else [""] * n
    return y, p, [f"{a} {b}".strip() for a, b in zip(ys, ps, strict=True)]


def plot_patch_grid(images, labels=None, probs=None, n=100, title=None) -> Figure:
    """The first ``n`` patches, 10 a row, captioned with label and probability: green when the
    0.5-thresholded probability matches the label, red otherwise."""
    if (m := min(int(n), len(images))) < 1:
        raise ValueError("no images to plot")
    y, p, captions = _captions(len(images), labels, probs)
    fig, axes = grid(m, 10, (1.25, 1.25), extra_h=0.6 if title else 0.3)
    for i, (ax, img) in enumerate(zip(axes.flat, np.asarray(images[:m]), strict=False)):
        _show_patch(ax, img, captions[i])
        if y is not None and p is not None:
            ax.title.set_color("green" if int(p[i] >= 0.5) == y[i] else "red")
    if title:
        fig.suptitle(title)
    fig.tight_layout(pad=0.3)
    return fig


def plot_confident_errors(images, y_true, y_prob, n=16, *, threshold=0.5) -> Figure:
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
    cols, rows = max(1, min(8, n)), max(1, (n + 7) // 8)
    fig = plt.figure(figsize=(cols * 1.7, 2 * (rows * 1.8 + 0.6)))
    for sub, (label, idx) in zip(fig.subfigures(2, 1), groups, strict=True):
        sub.suptitle(f"Most confident {label}: showing {len(idx[:n])} of {len(idx)}", fontsize=12)
        axes = sub.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, i in zip(axes, idx[:n], strict=False):
            _show_patch(ax, np.asarray(images[int(i)]), f"#{i} p={yp[i]:.3f}", fontsize=10)
        if not len(idx):
            axes[0].text(0, 0.5, "none", fontsize=12)
    return fig


def plot_gradcam(images, heatmaps, probs=None, labels=None) -> Figure:
    """Each patch beside its Grad-CAM overlay, 4 pairs a row, one colour scale for all maps."""
    imgs, heat = np.asarray(images), np.asarray(heatmaps, dtype=np.float32)
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
    if len(imgs):  # each map is divided by its own maximum
        fig.subplots_adjust(right=0.93)
        cax = fig.add_axes((0.945, 0.15, 0.01, 0.7), label="colorbar")
        fig.colorbar(shown, cax=cax, label="Grad-CAM (÷ its max)")
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


def _gradient(head, feat):
    """d sum(head(feat)) / d feat: the one step Keras has no backend-neutral API for."""
    if (backend := keras.backend.backend()) == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(feat)
            total = tf.reduce_sum(tf.cast(head(feat, training=False), "float32"))
        return tape.gradient(total, feat)
    if backend == "jax":
        import jax

        return jax.grad(lambda f: head(f, training=False).astype("float32").sum())(feat)
    raise ValueError(f"gradcam supports the tensorflow and jax Keras backends; this is {backend!r}")


def gradcam(model: keras.Model, images, *, layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of the tumour logit (a saturated sigmoid has no
    gradient) at input resolution, on ``layer_name`` or :func:`find_target_layer`'s pick."""
    feature_map = model.get_layer(layer_name := find_target_layer(model, layer_name)).output
    logit = next((la.output for la in model.layers if la.name == "tumor_logit"), model.outputs[0])
    try:
        head = keras.Model(feature_map, logit)
    except ValueError:  # the rest of the model also needs the input
        raise ValueError(
            f"cannot cut the model at {layer_name!r}: it is not on every path from the input to "
            "the output (pick a block output: conv5_block3_out, not conv5_block3_2_conv)"
        ) from None
    features, chunks = keras.Model(model.inputs[0], feature_map), []
    for start in range(0, len(images), BATCH):
        x = np.asarray(images[start : start + BATCH])
        if x.ndim != 4:
            raise ValueError(f"images must be NHWC; images[{start}:] has shape {x.shape}")
        top, left, (h, w) = 0, 0, x.shape[1:3]  # the pixels the network sees: PCamNet's crop
        for crop in (la for la in model.layers if isinstance(la, keras.layers.CenterCrop)):
            ch, cw = min(crop.height, h), min(crop.width, w)
            top, left, h, w = top + (h - ch) // 2, left + (w - cw) // 2, ch, cw
        feat = features(x, training=False)
        grads = keras.ops.convert_to_numpy(_gradient(head, feat)).astype(np.float32)
        feat = keras.ops.convert_to_numpy(feat).astype(np.float32)
        bad = ~(np.isfinite(feat).all(axis=(1, 2, 3)) & np.isfinite(grads).all(axis=(1, 2, 3)))
        if bad.any():
            raise ValueError(f"non-finite feature map/gradient for image {start + np.argmax(bad)}")
        cam = np.maximum((grads.mean(axis=(1, 2), keepdims=True) * feat).sum(axis=-1), 0.0)
        big = keras.ops.convert_to_numpy(keras.ops.image.resize(cam[..., None], (h, w)))
        out = np.zeros(x.shape[:3], np.float32)  # zero where a centre crop hides the pixels
        out[:, top : top + h, left : left + w] = np.maximum(big[..., 0], 0)  # bilinear
        peak = out.max(axis=(1, 2), keepdims=True)
        chunks.append(out / np.where(peak > 0, peak, 1.0))  # a map with no evidence stays zero
    return np.concatenate(chunks) if chunks else np.zeros((0, *np.shape(images)[1:3]), np.float32)
