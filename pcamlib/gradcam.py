"""Grad-CAM heat-maps showing which tissue drove a Keras model's tumour score."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

__all__ = ["find_target_layer", "gradcam"]  # plot_gradcam is re-exported lazily

# Layers whose 4-D output is not a learned feature map worth explaining.
_SKIP_MODULES = ("pooling", "regularization", "preprocessing", "input_layer", "reshaping")


class _Slot:
    """Holds the zero perturbation the probe adds, set per batch outside the graph."""

    value: Any = None


class _Probe(keras.layers.Layer):
    """Identity plus a zero ``delta``, so d(score)/d(feature map) = d(score)/d(delta)."""

    def __init__(self, slot: _Slot, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._slot = slot

    def call(self, x: Any) -> Any:
        delta = self._slot.value
        return x if delta is None else x + delta

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


def __getattr__(name: str) -> Any:
    """Re-export ``plots.plot_gradcam`` lazily so model code does not pay for matplotlib."""
    if name == "plot_gradcam":
        from .plots import plot_gradcam

        return plot_gradcam
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_graph_model(layer: Any) -> bool:
    """Sequential or functional models can be walked; subclassed ones cannot."""
    return isinstance(layer, keras.Sequential) or (
        isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph")
    )


def _rank(layer: Any) -> int | None:
    """Rank of a layer's (single) output, or None when it has none or several."""
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError, TypeError):
        return None


def _walk(model: Any, prefix: tuple = ()) -> list[tuple]:
    """Every layer as a path of layers from the outer model, nested models expanded in place."""
    out = []
    for layer in model.layers:
        path = (*prefix, layer)
        out.append(path)
        if _is_graph_model(layer):
            out.extend(_walk(layer, path))
    return out


def _name(path: tuple) -> str:
    return "/".join(layer.name for layer in path)


def find_target_layer(model: keras.Model, layer_name: str | None = None) -> str:
    """Path ("backbone/block5_conv3") of the feature map Grad-CAM uses, to show the default."""
    return _name(_find_path(model, layer_name))


def _find_path(model: Any, layer_name: str | None) -> tuple:
    """The last conv-like 4-D feature map (skipping pooling), or the one named, as a layer path."""
    if not _is_graph_model(model):
        raise ValueError(
            f"gradcam needs a Sequential or functional model; got {type(model).__name__}"
        )
    paths = [p for p in _walk(model) if not _is_graph_model(p[-1])]
    if layer_name is not None:
        hits = [p for p in paths if _name(p) == layer_name or _name(p).endswith("/" + layer_name)]
        if not hits:
            maps = [_name(p) for p in paths if _rank(p[-1]) == 4][-8:]
            raise ValueError(f"no layer named {layer_name!r}; last 4-D layers are {maps}")
        if len(hits) > 1:
            raise ValueError(f"layer name {layer_name!r} is ambiguous: {[_name(p) for p in hits]}")
        if _rank(hits[0][-1]) != 4:
            raise ValueError(f"layer {layer_name!r} does not output a 4-D (N, h, w, C) feature map")
        return hits[0]
    first_conv = next(
        (i for i, p in enumerate(paths) if "convolutional" in type(p[-1]).__module__), None
    )
    if first_conv is None:
        raise ValueError("model has no convolutional layer to explain; pass layer_name=")
    for path in reversed(paths[first_conv:]):
        module = type(path[-1]).__module__
        if _rank(path[-1]) == 4 and not any(s in module for s in _SKIP_MODULES):
            return path
    raise ValueError("found no 4-D feature map after the first conv layer; pass layer_name=")


def _is_sigmoid(fn: Any) -> bool:
    return getattr(fn, "__name__", "") == "sigmoid"


def _output_layer(model: Any) -> Any:
    """The layer producing the model's output (the one whose sigmoid we strip)."""
    if len(model.outputs) != 1:
        raise ValueError(f"gradcam needs a single (N, 1) output; model has {len(model.outputs)}")
    history = getattr(model.outputs[0], "_keras_history", None)
    return history[0] if history else model.layers[-1]


class _Logit(keras.layers.Layer):
    """A sigmoid Dense without its activation, reusing the original kernel and bias."""

    def __init__(self, dense: keras.layers.Dense, **kwargs: Any) -> None:
        super().__init__(name=f"{dense.name}_logit", **kwargs)
        self._dense = dense
        self.built = True

    def call(self, x: Any) -> Any:
        y = keras.ops.matmul(x, self._dense.kernel)
        return y + self._dense.bias if self._dense.use_bias else y

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (*input_shape[:-1], self._dense.units)


def _call_as_logit(layer: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the output layer without its sigmoid: saturated p = 1.0 would give zero gradients."""
    if isinstance(layer, keras.layers.Dense) and _is_sigmoid(layer.activation):
        return _Logit(layer)(args[0])
    if isinstance(layer, keras.layers.Activation) and _is_sigmoid(layer.activation):
        return args[0]
    return layer(*args, **kwargs)


def _rebuild(model: Any, path: tuple, slot: _Slot, logits: bool) -> keras.Model:
    """Same layers and weights, rewired to output (probed feature map at ``path``, score)."""
    captured: list[Any] = []
    final = _output_layer(model) if logits else None

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer is path[0] and len(path) == 1:
            out = _Probe(slot)(layer(*args, **kwargs))
            captured.append(out)
            return out
        if layer is path[0]:
            feat, out = _rebuild(layer, path[1:], slot, logits=False)(*args, **kwargs)
            captured.append(feat)
            return out
        if layer is final:
            return _call_as_logit(layer, *args, **kwargs)
        return layer(*args, **kwargs)

    if isinstance(model, keras.Sequential):
        spec = model.inputs[0]
        inputs = keras.Input(batch_shape=spec.shape, dtype=spec.dtype)
        x = inputs
        for layer in model.layers:
            x = call(layer, x)
        outputs = x
    else:
        clone = keras.models.clone_model(
            model, clone_function=lambda layer: layer, call_function=call
        )
        inputs, outputs = clone.input, clone.outputs[0]
    if len(captured) != 1:
        raise ValueError(f"layer {path[0].name!r} is called {len(captured)} times; cannot probe it")
    return keras.Model(inputs, [captured[0], outputs])


def _feature_grads(probe: keras.Model, slot: _Slot, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature map and d(sum of scores)/d(feature map) for one batch, per backend."""
    feat_spec = probe.outputs[0]
    shape = tuple(feat_spec.shape[1:])
    if any(d is None for d in shape):
        shape = tuple(keras.ops.shape(probe(x, training=False)[0])[1:])
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf  # gradients need the backend's autodiff

            delta = tf.zeros((len(x), *shape), dtype=feat_spec.dtype)
            with tf.GradientTape() as tape:
                tape.watch(delta)
                slot.value = delta
                feat, score = probe(x, training=False)
                total = tf.reduce_sum(tf.cast(score, "float32"))
            grads = tape.gradient(total, delta)
        elif backend == "jax":
            import jax
            import jax.numpy as jnp

            def total(delta: Any) -> tuple[Any, Any]:
                slot.value = delta
                feat, score = probe(x, training=False)
                return jnp.sum(score.astype("float32")), feat

            grads, feat = jax.grad(total, has_aux=True)(
                jnp.zeros((len(x), *shape), feat_spec.dtype)
            )
        else:
            raise ValueError(
                f"gradcam supports the tensorflow and jax Keras backends; this is {backend!r}"
            )
    finally:
        slot.value = None
    return (
        np.asarray(keras.ops.convert_to_numpy(feat), dtype=np.float32),
        np.asarray(keras.ops.convert_to_numpy(grads), dtype=np.float32),
    )


def _field_of_view(model: keras.Model, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the input the network sees: the window of a CenterCrop.

    A model that centre-crops (e.g. PCamNet) computes its feature map from the crop only, so
    the map belongs over that window, not stretched over the whole patch.
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

    The feature map is ``layer_name`` (a layer name, or "backbone/layer" inside a nested model)
    or, by default, the last conv-like 4-D output, looking inside nested backbones
    (see :func:`find_target_layer`). When the model ends in a sigmoid, gradients are taken of the
    pre-sigmoid logit so confident patches do not get blank maps. Each map is ReLU-ed, resized
    bilinearly onto the part of the patch the network sees (the crop window of a centre-cropping
    model, zero outside) and divided by its maximum; a map with no evidence is all zeros.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    path = _find_path(model, layer_name)
    slot = _Slot()
    probe = _rebuild(model, path, slot, logits=True)
    n = len(images)
    chunks = []
    for start in range(0, n, int(batch_size)):
        x = np.asarray(images[start : start + batch_size])
        if x.ndim != 4:
            raise ValueError(f"images must be NHWC; images[{start}:] has shape {x.shape}")
        feat, grads = _feature_grads(probe, slot, x)
        bad = ~(np.isfinite(feat).all(axis=(1, 2, 3)) & np.isfinite(grads).all(axis=(1, 2, 3)))
        if bad.any():
            raise ValueError(
                f"non-finite feature map or gradient for image {start + np.argmax(bad)}"
            )
        weights = grads.mean(axis=(1, 2), keepdims=True)
        cam = np.maximum((weights * feat).sum(axis=-1), 0.0)
        top, left, h, w = _field_of_view(model, x.shape[1:3])
        big = keras.ops.image.resize(cam[..., None], (h, w), interpolation="bilinear")
        cam = np.zeros(x.shape[:3], np.float32)
        cam[:, top : top + h, left : left + w] = np.maximum(
            keras.ops.convert_to_numpy(big)[..., 0].astype(np.float32), 0.0
        )
        peak = cam.max(axis=(1, 2), keepdims=True)
        chunks.append(np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0))
    if not chunks:
        return np.zeros((0, *tuple(np.shape(images))[1:3]), np.float32)
    return np.clip(np.concatenate(chunks), 0.0, 1.0).astype(np.float32)
