"""Grad-CAM heat-maps showing which tissue drove a Keras model's tumour score.

keras-io's recipe (``examples/vision/grad_cam.py``) on public Keras API, batched and resized:
cut the model at a feature map into ``features`` and ``head`` models, take one gradient of the
score with respect to the map, weight its channels by their mean gradient, sum, ReLU, divide
by the max. Works on TensorFlow and JAX (the gradient is the only per-backend line).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

__all__ = ["find_target_layer", "gradcam"]

# Layers whose 4-D output is not a learned feature map worth explaining.
_SKIP_MODULES = ("pooling", "regularization", "preprocessing", "input_layer", "reshaping")
_NESTED_HINT = (
    "Grad-CAM needs the feature map in the model's own graph; build the backbone on the "
    "model's tensor (keras.applications.VGG16(input_tensor=x, ...)), as pcamlib.models does"
)


def _rank(layer: Any) -> int | None:
    """Rank of a layer's (single) output, or None when it has none or several."""
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError, TypeError):
        return None


def find_target_layer(model: keras.Model, layer_name: str | None = None) -> str:
    """The feature map Grad-CAM uses: ``layer_name`` checked, else the last conv-like 4-D output.

    Pooling, dropout, reshaping and preprocessing outputs are skipped. Layers inside a nested
    model cannot be reached through public Keras API, hence the ``input_tensor=`` advice.
    """
    if getattr(model, "inputs", None) is None:
        raise ValueError(f"gradcam needs a Sequential or functional model; got {type(model)}")
    layers = model.layers
    nested = [layer.name for layer in layers if isinstance(layer, keras.Model)]
    if layer_name is not None:
        if layer_name not in {layer.name for layer in layers}:
            maps = [layer.name for layer in layers if _rank(layer) == 4][-8:]
            hint = f"; {_NESTED_HINT} (nested: {nested})" if nested else ""
            raise ValueError(f"no layer named {layer_name!r}; last 4-D layers are {maps}{hint}")
        if _rank(model.get_layer(layer_name)) != 4:
            raise ValueError(f"layer {layer_name!r} does not output a 4-D (N, h, w, C) feature map")
        return layer_name
    convs = ["convolutional" in type(la).__module__ or isinstance(la, keras.Model) for la in layers]
    if not any(convs):
        raise ValueError("model has no convolutional layer to explain; pass layer_name=")
    for layer in reversed(layers[convs.index(True) :]):
        if _rank(layer) == 4 and not any(s in type(layer).__module__ for s in _SKIP_MODULES):
            if isinstance(layer, keras.Model):
                raise ValueError(
                    f"the feature maps are inside nested model {layer.name!r}. " + _NESTED_HINT
                )
            return layer.name
    raise ValueError("found no 4-D feature map after the first conv layer; pass layer_name=")


def _score(model: keras.Model) -> tuple[Any, Callable[[Any], Any]]:
    """(tensor, finish): ``finish(tensor)`` is the pre-sigmoid tumour logit.

    A saturated probability (p = 1.0 in float32) has zero gradient, so the logit is explained:
    ``tumor_logit``, or the input of a final sigmoid (a sigmoid ``Dense``'s weights applied).
    """
    if "tumor_logit" in {layer.name for layer in model.layers}:
        return model.get_layer("tumor_logit").output, lambda t: t
    last = model.layers[-1]
    if getattr(last, "activation", None) is not keras.activations.sigmoid:
        return model.outputs[0], lambda t: t
    if isinstance(last, keras.layers.Dense):
        kernel, bias = last.kernel, last.bias

        def finish(t: Any) -> Any:
            y = keras.ops.matmul(keras.ops.cast(t, kernel.dtype), kernel)
            return y if bias is None else y + bias

        return last.input, finish
    return last.input, lambda t: t


def _cut(model: keras.Model, layer_name: str) -> tuple[keras.Model, Callable[[Any], Any]]:
    """``features`` (input → feature map) and ``head`` (feature map → logit) of ``model``."""
    feature_map = model.get_layer(layer_name).output
    tensor, finish = _score(model)
    try:
        head_model = keras.Model(feature_map, tensor)
    except ValueError:  # the rest of the model also needs the input, or another model's graph
        raise ValueError(
            f"cannot cut the model at {layer_name!r}: it is not on every path from the input to "
            "the output (pick a block output: conv5_block3_out, not conv5_block3_2_conv), or "
            "the layer is shared with another model"
        ) from None
    features = keras.Model(model.inputs[0], feature_map)
    return features, lambda f: finish(head_model(f, training=False))


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
    """(top, left, height, width) of the input the network sees: a CenterCrop's window.

    A centre-cropping model (PCamNet) maps only the crop, so its map goes over that window.
    """
    top, left, (h, w) = 0, 0, size
    for layer in model.layers:
        if isinstance(layer, keras.layers.CenterCrop):
            ch, cw = min(layer.height, h), min(layer.width, w)
            top, left, h, w = top + (h - ch) // 2, left + (w - cw) // 2, ch, cw
    return top, left, h, w


def gradcam(
    model: keras.Model,
    images: Any,
    *,
    layer_name: str | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] at input resolution for the tumour output.

    The feature map is ``layer_name`` or the one :func:`find_target_layer` picks; gradients are
    of the pre-sigmoid logit. Each map is ReLU-ed, resized bilinearly onto the part of the patch
    the network sees (zero outside a centre crop) and divided by its maximum; a map with no
    evidence is all zeros.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    features, head = _cut(model, find_target_layer(model, layer_name))
    chunks = []
    for start in range(0, len(images), int(batch_size)):
        x = np.asarray(images[start : start + batch_size])
        if x.ndim != 4:
            raise ValueError(f"images must be NHWC; images[{start}:] has shape {x.shape}")
        feat = features(x, training=False)
        grads = keras.ops.convert_to_numpy(_gradient(head, feat)).astype(np.float32)
        feat = keras.ops.convert_to_numpy(feat).astype(np.float32)
        bad = ~(np.isfinite(feat).all(axis=(1, 2, 3)) & np.isfinite(grads).all(axis=(1, 2, 3)))
        if bad.any():
            raise ValueError(
                f"non-finite feature map or gradient for image {start + np.argmax(bad)}"
            )
        cam = np.maximum((grads.mean(axis=(1, 2), keepdims=True) * feat).sum(axis=-1), 0.0)
        top, left, h, w = _field_of_view(model, x.shape[1:3])
        big = keras.ops.image.resize(cam[..., None], (h, w), interpolation="bilinear")
        cam = np.zeros(x.shape[:3], np.float32)
        cam[:, top : top + h, left : left + w] = np.maximum(
            keras.ops.convert_to_numpy(big)[..., 0], 0
        )
        peak = cam.max(axis=(1, 2), keepdims=True)
        chunks.append(cam / np.where(peak > 0, peak, 1.0))  # an all-zero map stays zero
    if not chunks:
        return np.zeros((0, *np.shape(images)[1:3]), np.float32)
    return np.concatenate(chunks)
