"""Architecture diagrams (visualkeras layered view) that work under Keras 3.

visualkeras reads ``layer.output_shape``, which Keras 3 layers no longer have. Its layered
renderer only touches ``model.layers``, ``type(layer)`` and ``layer.output_shape``, so it gets
read-only views of the layers instead of a patched model: nothing is left behind on failure.
Long models (a ResNet50 built on the model's own tensor has 175 layers) are drawn one box
per stage: consecutive layers sharing a name stem (``conv2_block1_1_conv`` → ``conv2``).
"""

from __future__ import annotations

import itertools
import os
import types
import warnings
from pathlib import Path

from PIL import Image, ImageFont

from .cache import atomic_path

__all__ = ["draw_model"]
MAX_BOXES = 40  # above this many layers, draw one box per stage


class _LayerView:
    """Stand-in layer exposing ``output_shape``; other attributes delegate."""

    def __init__(self, layer, output_shape):
        self._layer = layer
        self.output_shape = output_shape

    def __getattr__(self, name):  # only called for attributes not set above
        return getattr(self._layer, name)


def _output_shape(layer):
    """Shape of the layer's (first) symbolic output, as a plain tuple."""
    out = layer.output  # raises if the layer was never called symbolically
    if isinstance(out, (list, tuple)):
        out = out[0]
    return tuple(None if d is None else int(d) for d in out.shape)


def _flatten(model, expand_nested, top=True):
    """Layers to draw; nested models become one block unless expanded."""
    import keras

    for layer in model.layers:
        if expand_nested and isinstance(layer, keras.Model):
            yield from _flatten(layer, expand_nested, top=False)
        elif top or not isinstance(layer, keras.layers.InputLayer):
            yield layer  # a nested model's own InputLayer would duplicate a box


def _legend_font():
    """A readable TrueType font, else PIL's built-in one (a bitmap font without FreeType)."""
    for load in (
        lambda: ImageFont.truetype("DejaVuSans.ttf", 14),
        lambda: ImageFont.load_default(size=14),
    ):
        try:
            return load()
        except Exception:  # noqa: BLE001 - missing font file / no FreeType / old Pillow
            continue
    return ImageFont.load_default()


def _stages(layers):
    """(label, layers) runs: each layer alone, or for long models runs sharing a name stem."""
    if len(layers) <= MAX_BOXES:
        return [(None, [layer]) for layer in layers]
    stages = []
    for stem, run in itertools.groupby(layers, key=lambda layer: layer.name.split("_")[0]):
        run = list(run)
        stages.append((stem if len(run) > 1 else None, run))
    return stages


def _render(model, expand_nested, legend, kwargs):
    import keras
    import visualkeras

    if getattr(model, "inputs", None) is None:
        raise TypeError(
            f"{type(model).__name__} is not a functional graph (subclassed model, "
            "or a Sequential model built without keras.Input); nothing to draw"
        )
    # One proxy class per real layer type (or per nested model, labelled by its
    # name) so visualkeras' legend and colours, keyed by type(layer), still work.
    # A stage is drawn as its last layer, labelled by its stem.
    classes, views = {}, []
    for stem, run in _stages(list(_flatten(model, expand_nested))):
        layer = run[-1]
        key = stem or (layer.name if isinstance(layer, keras.Model) else type(layer))
        if key not in classes:
            label = key if isinstance(key, str) else key.__name__
            classes[key] = type(label, (_LayerView,), {"wrapped_type": type(layer)})
        views.append(classes[key](layer, _output_shape(layer)))
    # The caller's color_map / type_ignore name real Keras classes.
    if kwargs.get("color_map"):
        wanted = kwargs["color_map"]
        kwargs["color_map"] = {
            c: wanted[c.wrapped_type] for c in classes.values() if c.wrapped_type in wanted
        }
    if kwargs.get("type_ignore"):
        ignore = set(kwargs["type_ignore"])
        kwargs["type_ignore"] = [c for c in classes.values() if c.wrapped_type in ignore]
    kwargs.setdefault("legend_text_spacing_offset", 0)  # silences a deprecation warning
    if legend and kwargs.get("font") is None:
        kwargs["font"] = _legend_font()
    return visualkeras.layered_view(types.SimpleNamespace(layers=views), legend=legend, **kwargs)


def draw_model(
    model,
    path: str | os.PathLike | None = None,
    *,
    expand_nested: bool = False,
    legend: bool = True,
    **kwargs,
) -> Image.Image | None:
    """Render ``model`` as a visualkeras layered view; optionally save it to ``path``.

    Never raises: a diagram must not break a training run or notebook, so any
    failure (subclassed model, render or write error) becomes a warning and
    ``None``. ``kwargs`` go to ``visualkeras.layered_view`` (not ``to_file``).
    """
    try:
        img = _render(model, expand_nested, legend, dict(kwargs))
        if path is not None:
            fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
            with atomic_path(path) as tmp:  # JPEG and BMP have no alpha channel
                (img.convert("RGB") if fmt in ("JPEG", "BMP") else img).save(tmp, format=fmt)
        return img
    except Exception as exc:  # noqa: BLE001 - by design, see docstring
        name = getattr(model, "name", type(model).__name__)
        warnings.warn(
            f"draw_model: could not draw {name!r}: {type(exc).__name__}: {exc}", stacklevel=2
        )
        return None
