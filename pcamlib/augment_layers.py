"""Augmentation as the first layers of the training model: it runs where the model runs.

With ``TrainConfig(augment_on="model")`` the dihedral view, shift, colour and HED stain
jitter are Keras layers in front of the network, so on a GPU they run in the training graph
on the GPU and the host only reads and batches uint8 patches (a 2-core host can then feed
a fast GPU; see ``benchmarks/pipeline.py``). Every layer is the identity unless
``training=True`` (``model.fit``), so ``predict``, ``evaluate`` and TTA×8 see the plain model,
and a saved model needs no special handling. Each layer owns a ``keras.random.SeedGenerator``,
which :func:`pcamlib.train.reseed` resets from (seed, epoch): a resumed run draws the same
augmentations as an uninterrupted one.

:class:`ReinhardNormalization` is the exception: a deterministic stain normalisation that is
active at training *and* inference, so the saved model carries it and a new centre's patches
are normalised the same way.

Only ``keras.ops`` / ``keras.random``: the same code runs on TensorFlow, JAX and PyTorch.
Each layer works in float32 and returns its input's dtype (uint8 in, uint8 out).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from . import stain
from .config import TrainConfig

PLACEMENTS = ("host", "model")


def _float(x):
    return ops.cast(x, "float32")


def _like(y, x, *, pixels: bool):
    """``y`` cast back to ``x``'s dtype; integer pixel values are rounded and clipped first."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    if pixels and "int" in dtype:
        y = ops.clip(ops.round(y), 0, 255)
    return ops.cast(y, dtype)


class _RandomLayer(keras.layers.Layer):
    """A layer with its own SeedGenerator, which ``reseed`` finds via ``keras_shim.seed_states``."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, x, shape, low=0.0, high=1.0):
        """Uniform draws of ``(batch, *shape)``, reshaped to broadcast over NHWC."""
        n = ops.shape(x)[0]
        return keras.random.uniform((n, *shape), low, high, seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="pcamlib")
class RandomDihedral(_RandomLayer):
    """One of the 8 dihedral views per image (transpose, flip up-down, flip left-right: 3 coins)."""

    def call(self, x, training=False):
        if not training:
            return x
        y = _float(x)
        coins = self._uniform(y, (3, 1, 1, 1)) < 0.5  # (n, 3, 1, 1, 1)
        y = ops.where(coins[:, 0], ops.transpose(y, (0, 2, 1, 3)), y)
        y = ops.where(coins[:, 1], ops.flip(y, axis=1), y)
        y = ops.where(coins[:, 2], ops.flip(y, axis=2), y)
        return _like(y, x, pixels=False)

    def build(self, input_shape):
        if input_shape[1] != input_shape[2]:
            raise ValueError(f"dihedral views need square patches; got {input_shape}")


def _reflect(index, size: int):
    """Mirror out-of-range indices back into 0..size-1 (numpy's ``reflect`` padding)."""
    index = ops.abs(index)
    return (size - 1) - ops.abs((size - 1) - index)


@keras.saving.register_keras_serializable(package="pcamlib")
class RandomShift(_RandomLayer):
    """Translate each image by its own whole-pixel (dy, dx) in [-shift, shift], no wrap-around.

    Pixels moved in at the border are the mirror image of the patch's edge (reflect
    padding), not the opposite edge. In front of a model that centre-crops (PCamNet takes the
    centre 64×64 of 96) a shift of ≤ (96 - crop) / 2 never brings them into view at all.
    """

    def __init__(self, shift: int, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        if shift < 0:
            raise ValueError(f"shift must be ≥ 0, got {shift}")
        self.shift = int(shift)

    def call(self, x, training=False):
        if not training or not self.shift:
            return x
        y = _float(x)
        n = ops.shape(y)[0]
        h, w, c = y.shape[1], y.shape[2], y.shape[3]
        d = keras.random.randint((n, 2), -self.shift, self.shift + 1, seed=self.seed_generator)
        rows = _reflect(ops.arange(h)[None, :] - d[:, :1], h)  # (n, h): content moves by +d
        cols = _reflect(ops.arange(w)[None, :] - d[:, 1:], w)
        base = ops.arange(n)[:, None, None] * (h * w)
        flat = base + rows[:, :, None] * w + cols[:, None, :]  # (n, h, w) pixel numbers
        y = ops.take(ops.reshape(y, (-1, c)), ops.reshape(flat, (-1,)), axis=0)
        return _like(ops.reshape(y, (n, h, w, c)), x, pixels=False)

    def get_config(self):
        return {**super().get_config(), "shift": self.shift}


@keras.saving.register_keras_serializable(package="pcamlib")
class HEDJitter(_RandomLayer):
    """Tellez et al. (2019) stain augmentation: H, E, DAB scaled by U(1±σ), shifted by U(±σ).

    The same arithmetic as :func:`pcamlib.stain.hed_jitter` (optical density, σ = 0.05 is
    mild), in the training graph.
    """

    def __init__(self, sigma: float, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        if not 0 <= sigma < 1:
            raise ValueError(f"HED jitter strength must be in [0, 1), got {sigma}")
        self.sigma = float(sigma)

    def call(self, x, training=False):
        if not training or not self.sigma:
            return x
        s = self.sigma
        factors = self._uniform(x, (2, 3), -s, s)  # (n, 2, 3): alpha - 1, beta
        alpha = 1.0 + ops.reshape(factors[:, 0], (-1, 1, 1, 3))
        beta = ops.reshape(factors[:, 1], (-1, 1, 1, 3))
        return _like(apply_hed(x, alpha, beta), x, pixels=True)

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma}


def apply_hed(x, alpha, beta):
    """RGB (0–255) → stain concentrations → ``alpha · c + beta`` → RGB (0–255, float32)."""
    hed_from_rgb = ops.convert_to_tensor(stain.HED_FROM_RGB, "float32")
    rgb_from_hed = ops.convert_to_tensor(stain.RGB_FROM_HED, "float32")
    od = -ops.log((_float(x) + 1.0) / stain.I0)
    hed = ops.matmul(od, hed_from_rgb) * alpha + beta
    return stain.I0 * ops.exp(-ops.matmul(hed, rgb_from_hed)) - 1.0


@keras.saving.register_keras_serializable(package="pcamlib")
class RandomColour(_RandomLayer):
    """Brightness ±c·128, contrast ×(1±c) about the image mean, per-channel gain ×(1±c/2).

    :func:`pcamlib.augment.jitter_colour` as a layer: ``color_jitter`` means the same on
    either placement.
    """

    def __init__(self, strength: float, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        if not 0 <= strength < 1:
            raise ValueError(f"colour jitter strength must be in [0, 1), got {strength}")
        self.strength = float(strength)

    def call(self, x, training=False):
        if not training or not self.strength:
            return x
        c = self.strength
        u = self._uniform(x, (1, 1, 5), -1.0, 1.0)  # contrast, 3 gains, brightness
        y = _float(x)
        mean = ops.mean(y, axis=(1, 2, 3), keepdims=True)
        contrast, gain = 1 + c * u[..., :1], 1 + c / 2 * u[..., 1:4]
        y = ((y - mean) * contrast + mean) * gain + c * 128 * u[..., 4:]
        return _like(y, x, pixels=True)

    def get_config(self):
        return {**super().get_config(), "strength": self.strength}


@keras.saving.register_keras_serializable(package="pcamlib")
class ReinhardNormalization(keras.layers.Layer):
    """Reinhard stain normalisation: each image's lαβ mean/std matched to a fixed target.

    Active at training and inference alike (it is preprocessing, not augmentation), so the
    saved model applies it to every patch it is given. Targets come from
    :func:`pcamlib.stain.reinhard_target` on training patches and are stored in the config.
    """

    def __init__(self, means, stds, eps: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.means, self.stds = [float(v) for v in means], [float(v) for v in stds]
        self.eps = float(eps)

    def call(self, x):
        lms_from_rgb = ops.convert_to_tensor(stain.LMS_FROM_RGB.T, "float32")
        lab_from_loglms = ops.convert_to_tensor(stain.LAB_FROM_LOGLMS.T, "float32")
        loglms_from_lab = ops.convert_to_tensor(stain.LOGLMS_FROM_LAB.T, "float32")
        rgb_from_lms = ops.convert_to_tensor(stain.RGB_FROM_LMS.T, "float32")
        lms = ops.matmul(ops.maximum(_float(x), 1.0), lms_from_rgb)
        lab = ops.matmul(ops.log(ops.maximum(lms, 1.0)) / np.log(10.0), lab_from_loglms)
        mu = ops.mean(lab, axis=(1, 2), keepdims=True)
        sd = ops.std(lab, axis=(1, 2), keepdims=True)
        means = ops.convert_to_tensor(self.means, "float32")
        stds = ops.convert_to_tensor(self.stds, "float32")
        lab = (lab - mu) / (sd + self.eps) * stds + means
        lms = ops.power(10.0, ops.matmul(lab, loglms_from_lab))
        return _like(ops.matmul(lms, rgb_from_lms), x, pixels=True)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "means": self.means, "stds": self.stds, "eps": self.eps}


def _check(config: TrainConfig) -> None:
    if config.augment_on not in PLACEMENTS:
        raise ValueError(f"augment_on must be 'host' or 'model'; got {config.augment_on!r}")
    if config.stain_norm not in (None, "reinhard"):
        raise ValueError(f"stain_norm must be None or 'reinhard'; got {config.stain_norm!r}")


def host_augmentation(config: TrainConfig) -> dict:
    """The :class:`~pcamlib.data.PatchStream` arguments that augment on the host (numpy)."""
    _check(config)
    if config.augment_on != "host":
        return {}
    return dict(
        augment=config.augment,
        shift=config.shift,
        color_jitter=config.color_jitter,
        hed_jitter=config.hed_jitter,
    )


def model_front(
    config: TrainConfig, images: np.ndarray | None = None, rows: np.ndarray | None = None
) -> list[keras.layers.Layer]:
    """The layers to put in front of the training model: stain normalisation, then augmentation.

    ``images[rows]`` are the training patches the Reinhard target is measured on (an evenly
    spaced 2,000 of them); they are only read when ``config.stain_norm`` is set.
    """
    _check(config)
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
