"""Augmentation as the first layers of the training model: it runs where the model runs.

With ``TrainConfig(augment_on="model")`` the dihedral view, shift, colour and HED jitter run
in the training graph on the accelerator, so a 2-core host only batches uint8 patches (see
``benchmarks/pipeline.py``). They are the identity unless ``training=True``, so predict, TTA
and saved models see the plain model. :class:`ReinhardNormalization`
is preprocessing, active at inference too. Only ``keras.ops`` / ``keras.random`` (any
backend); each layer works in float32 and returns its input's dtype (uint8 in, uint8 out).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from . import stain
from .config import TrainConfig


def _float(x):
    return ops.cast(x, "float32")


def _like(y, x, *, pixels: bool):
    """``y`` cast back to ``x``'s dtype; integer pixel values are rounded and clipped first."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    if pixels and "int" in dtype:
        y = ops.clip(ops.round(y), 0, 255)
    return ops.cast(y, dtype)


def _fraction(value: float, what: str) -> float:
    if not 0 <= value < 1:
        raise ValueError(f"{what} strength must be in [0, 1), got {value}")
    return float(value)


class _RandomLayer(keras.layers.Layer):
    """Identity unless training; draws from its own SeedGenerator.

    Subclasses name their strength argument in ``setting`` (0 makes the layer the identity;
    it is saved in the config) and transform float32 pixels in ``augment``.
    """

    setting = ""
    pixels = True  # the output has new pixel values (rounded and clipped), not moved ones

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training or (self.setting and not getattr(self, self.setting)):
            return x
        return _like(self.augment(_float(x)), x, pixels=self.pixels)

    def _uniform(self, x, shape, low=0.0, high=1.0):
        """Uniform draws of ``(batch, *shape)``, reshaped to broadcast over NHWC."""
        n = ops.shape(x)[0]
        return keras.random.uniform((n, *shape), low, high, seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {**super().get_config(), "seed": self.seed}
        if self.setting:
            config[self.setting] = getattr(self, self.setting)
        return config


@keras.saving.register_keras_serializable(package="pcamlib")
class RandomDihedral(_RandomLayer):
    """One of the 8 dihedral views per image (transpose, flip up-down, flip left-right: 3 coins)."""

    pixels = False

    def augment(self, y):
        coins = self._uniform(y, (3, 1, 1, 1)) < 0.5  # (n, 3, 1, 1, 1)
        y = ops.where(coins[:, 0], ops.transpose(y, (0, 2, 1, 3)), y)
        y = ops.where(coins[:, 1], ops.flip(y, axis=1), y)
        return ops.where(coins[:, 2], ops.flip(y, axis=2), y)

    def build(self, input_shape):
        if input_shape[1] != input_shape[2]:
            raise ValueError(f"dihedral views need square patches; got {input_shape}")


def _reflect(index, size: int):
    """Mirror out-of-range indices back into 0..size-1 (numpy's ``reflect`` padding)."""
    return (size - 1) - ops.abs((size - 1) - ops.abs(index))


@keras.saving.register_keras_serializable(package="pcamlib")
class RandomShift(_RandomLayer):
    """Translate each image by its own whole-pixel (dy, dx) in [-shift, shift], no wrap-around.

    Pixels moved in at the border are the mirror image of the patch's edge (reflect
    padding), not the opposite edge. In front of a model that centre-crops (PCamNet takes the
    centre 64×64 of 96) a shift of ≤ (96 - crop) / 2 never brings them into view at all.
    """

    setting, pixels = "shift", False

    def __init__(self, shift: int, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        if shift < 0:
            raise ValueError(f"shift must be ≥ 0, got {shift}")
        self.shift = int(shift)

    def augment(self, y):
        n = ops.shape(y)[0]
        h, w, c = y.shape[1], y.shape[2], y.shape[3]
        d = keras.random.randint((n, 2), -self.shift, self.shift + 1, seed=self.seed_generator)
        rows = _reflect(ops.arange(h)[None, :] - d[:, :1], h)  # (n, h): content moves by +d
        cols = _reflect(ops.arange(w)[None, :] - d[:, 1:], w)
        base = ops.arange(n)[:, None, None] * (h * w)
        flat = base + rows[:, :, None] * w + cols[:, None, :]  # (n, h, w) pixel numbers
        y = ops.take(ops.reshape(y, (-1, c)), ops.reshape(flat, (-1,)), axis=0)
        return ops.reshape(y, (n, h, w, c))


@keras.saving.register_keras_serializable(package="pcamlib")
class HEDJitter(_RandomLayer):
    """Tellez et al. (2019) stain augmentation: :func:`pcamlib.stain.hed_jitter` in the graph."""

    setting = "sigma"

    def __init__(self, sigma: float, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        self.sigma = _fraction(sigma, "HED jitter")

    def augment(self, y):
        factors = self._uniform(y, (2, 3), -self.sigma, self.sigma)  # (n, 2, 3): alpha - 1, beta
        alpha = 1.0 + ops.reshape(factors[:, 0], (-1, 1, 1, 3))
        return apply_hed(y, alpha, ops.reshape(factors[:, 1], (-1, 1, 1, 3)))


def apply_hed(x, alpha, beta):
    """RGB (0–255) → stain concentrations → ``alpha · c + beta`` → RGB (0–255, float32)."""
    od = -ops.log((_float(x) + 1.0) / stain.I0)
    hed = ops.matmul(od, _float(stain.HED_FROM_RGB)) * alpha + beta
    return stain.I0 * ops.exp(-ops.matmul(hed, _float(stain.RGB_FROM_HED))) - 1.0


@keras.saving.register_keras_serializable(package="pcamlib")
class RandomColour(_RandomLayer):
    """:func:`pcamlib.augment.jitter_colour` as a layer: ``color_jitter`` means the same on either
    placement (brightness ±c·128, contrast ×(1±c) about the mean, channel gain ×(1±c/2))."""

    setting = "strength"

    def __init__(self, strength: float, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        self.strength = _fraction(strength, "colour jitter")

    def augment(self, y):
        c = self.strength
        u = self._uniform(y, (1, 1, 5), -1.0, 1.0)  # contrast, 3 gains, brightness
        mean = ops.mean(y, axis=(1, 2, 3), keepdims=True)
        contrast, gain = 1 + c * u[..., :1], 1 + c / 2 * u[..., 1:4]
        return ((y - mean) * contrast + mean) * gain + c * 128 * u[..., 4:]


@keras.saving.register_keras_serializable(package="pcamlib")
class ReinhardNormalization(keras.layers.Layer):
    """Reinhard stain normalisation (:func:`pcamlib.stain.reinhard_normalise`) in the model.

    Active at training and inference alike, so the saved model normalises every patch it is
    given; the target (from :func:`pcamlib.stain.reinhard_target`) is stored in the config.
    """

    def __init__(self, means, stds, eps: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.means, self.stds = [float(v) for v in means], [float(v) for v in stds]
        self.eps = float(eps)

    def call(self, x):
        lms = ops.matmul(ops.maximum(_float(x), 1.0), _float(stain.LMS_FROM_RGB.T))
        lab = ops.matmul(
            ops.log(ops.maximum(lms, 1.0)) / np.log(10.0), _float(stain.LAB_FROM_LOGLMS.T)
        )
        mu = ops.mean(lab, axis=(1, 2), keepdims=True)
        sd = ops.std(lab, axis=(1, 2), keepdims=True)
        lab = (lab - mu) / (sd + self.eps) * _float(self.stds) + _float(self.means)
        lms = ops.power(10.0, ops.matmul(lab, _float(stain.LOGLMS_FROM_LAB.T)))
        return _like(ops.matmul(lms, _float(stain.RGB_FROM_LMS.T)), x, pixels=True)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "means": self.means, "stds": self.stds, "eps": self.eps}


def host_augmentation(config: TrainConfig) -> dict:
    """The :class:`~pcamlib.stream.PatchStream` arguments that augment on the host (numpy)."""
    if config.augment_on != "host":
        return {}
    return {k: getattr(config, k) for k in ("augment", "shift", "color_jitter", "hed_jitter")}


def model_front(
    config: TrainConfig, images: np.ndarray | None = None, rows: np.ndarray | None = None
) -> list[keras.layers.Layer]:
    """The layers to put in front of the training model: stain normalisation, then augmentation.

    ``images[rows]`` are the training patches the Reinhard target is measured on (an evenly
    spaced 2,000 of them); they are only read when ``config.stain_norm`` is set.
    """
    front: list[keras.layers.Layer] = []
    if config.stain_norm == "reinhard":
        if images is None:
            raise ValueError("stain_norm='reinhard' needs training images for its target")
        rows = np.arange(len(images)) if rows is None else np.asarray(rows)
        sample = np.sort(rows[:: max(1, len(rows) // 2000)])
        front.append(
            ReinhardNormalization(*stain.reinhard_target(images[sample]), name="stain_norm")
        )
    if config.augment_on == "model":
        seed = config.seed
        if config.augment:
            front.append(RandomDihedral(seed=seed, name="aug_dihedral"))
        if config.shift:
            front.append(RandomShift(config.shift, seed=seed + 1, name="aug_shift"))
        if config.hed_jitter:
            front.append(HEDJitter(config.hed_jitter, seed=seed + 2, name="aug_hed"))
        if config.color_jitter:
            front.append(RandomColour(config.color_jitter, seed=seed + 3, name="aug_colour"))
    return front


def with_input_layers(model: keras.Model, front: list[keras.layers.Layer]) -> keras.Model:
    """``model`` with ``front`` applied to its input first: the same layers and weights, flat.

    Rebuilt with ``keras.models.clone_model`` reusing every layer (no copy, no nesting), so
    ``get_layer``, parameter counts and Grad-CAM see the model as it was.
    """
    if not front:
        return model
    (patch,) = model.inputs
    inputs = keras.Input(batch_shape=patch.shape, dtype=patch.dtype, name=patch.name)
    front_out = []

    def call(layer, *args, **kwargs):
        if any(a is inputs for a in args):  # a layer that reads the patch reads the front's output
            if not front_out:
                x = inputs
                for extra in front:
                    x = extra(x)
                front_out.append(x)
            args = tuple(front_out[0] if a is inputs else a for a in args)
        return layer(*args, **kwargs)

    return keras.models.clone_model(
        model, input_tensors=inputs, clone_function=lambda layer: layer, call_function=call
    )
