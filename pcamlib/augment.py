"""Label-preserving transforms and stain tools for uint8 NHWC patches: dihedral views (tissue has
no orientation), shifts, colour and HED stain jitter (Tellez et al. 2019) in numpy while batching
(``augment_on="host"``, faster on a CPU) or as seeded ``keras.ops`` layers off at inference
(``"model"``), with the same maths; Reinhard normalisation is a layer kept at inference."""

import keras
import numpy as np
from keras import ops

N_DIHEDRAL = 8

# Ruifrok & Johnston (2001) stain vectors in optical density, rows H, E, DAB: scikit-image's
# ``skimage.color.rgb_from_hed``; ``HED_FROM_RGB`` is its inverse, ``skimage.color.hed_from_rgb``.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
I0 = 256.0  # incident light: OD = -ln((I + 1) / I0) is finite for I = 0 and 0 for white

# Reinhard's lαβ: RGB → LMS (linear), log10, then a decorrelating rotation.
LMS_FROM_RGB = np.array([[3811, 5783, 402], [1967, 7244, 782], [241, 1288, 8444]]) / 1e4
LAB_FROM_LOGLMS = np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]]) / np.sqrt([[3.0], [6.0], [2.0]])
RGB_FROM_LMS = np.linalg.inv(LMS_FROM_RGB)
LOGLMS_FROM_LAB = np.linalg.inv(LAB_FROM_LOGLMS)
# float32 copies for the pixel maths: float64 matrices would make numpy promote every pixel.
_F32 = {k: v.astype(np.float32) for k, v in globals().copy().items() if "_FROM_" in k}
_OD = -np.log((np.arange(256, dtype=np.float32) + 1) / np.float32(I0))  # of each uint8 value


def dihedral(batch: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """View k (0–7: k%4 quarter-turns, then a left-right flip if k≥4); one k, or one per image."""
    x = np.asarray(batch)
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC batch (4-D); got shape {x.shape}")
    ks = np.broadcast_to(np.asarray(k), (len(x),))
    if ks.size and (not np.issubdtype(ks.dtype, np.integer) or ks.min() < 0 or ks.max() > 7):
        raise ValueError(f"k must be integers in 0..7; got {k!r}")
    if (ks % 2).any() and x.shape[1] != x.shape[2]:
        raise ValueError(f"rotating by 90 degrees needs square patches; got H, W = {x.shape[1:3]}")
    # Move whole pixels (one void item of C bytes), not single bytes: ~2x faster for uint8 RGB.
    pixels = np.ascontiguousarray(x).view(np.dtype((np.void, x.shape[-1] * x.itemsize)))[..., 0]
    out = np.empty_like(pixels)
    for t in np.unique(ks):
        sel = ks == t
        view = np.rot90(pixels[sel], int(t) % 4, axes=(1, 2))
        out[sel] = view[:, :, ::-1] if t >= 4 else view
    return out[..., None].view(x.dtype).reshape(out.shape + x.shape[-1:])


def dihedral_views(batch: np.ndarray) -> list[np.ndarray]:
    """All 8 dihedral views of a batch."""
    return [dihedral(batch, k) for k in range(N_DIHEDRAL)]


def random_shift(batch: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each image's content moved by its own random (dy, dx) in ±shift, the border mirrored."""
    (h, w), s = batch.shape[1:3], int(shift)
    if s >= min(h, w):
        raise ValueError(f"shifts of {s} px do not fit {h}×{w} patches")
    offsets = rng.integers(-s, s + 1, (len(batch), 2))
    padded = np.pad(batch, ((0, 0), (s, s), (s, s), (0, 0)), mode="reflect")
    out = np.empty_like(batch)
    for j, (dy, dx) in enumerate(offsets):  # one slice copy per image: cheaper than a gather
        out[j] = padded[j, s - dy : s - dy + h, s - dx : s - dx + w]
    return out


def _colour_affine(mean, u, c: float):
    """Colour jitter as scale and offset, from ``u`` ~ U(±1), (n, 1, 1, 5): brightness ±c·128,
    contrast ×(1±c) about the mean, channel gain ×(1±c/2)."""
    contrast, gain, bright = 1 + c * u[..., :1], 1 + c / 2 * u[..., 1:4], c * 128 * u[..., 4:]
    return contrast * gain, mean * (1 - contrast) * gain + bright  # ((x-m)·con + m)·gain + b


def jitter_colour(batch: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and per-channel gain per image, clipped back to uint8."""
    x = batch.astype(np.float32)
    u = rng.uniform(-1, 1, (len(x), 1, 1, 5)).astype(np.float32)
    scale, offset = _colour_affine(x.mean(axis=(1, 2, 3), keepdims=True), u, strength)
    x *= scale
    x += offset
    return np.clip(x, 0, 255, out=x).astype(np.uint8)


def _hed_affine(alpha, beta, xp=np):
    """HED jitter as one (n, 3, 3) OD matrix and offset (negative stains kept: 1, 0 is identity)."""
    matrix = xp.matmul(alpha[:, None, :] * _F32["HED_FROM_RGB"][None], _F32["RGB_FROM_HED"])
    return matrix, xp.matmul(beta, _F32["RGB_FROM_HED"])[:, None, :]


def hed_jitter(batch: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Tellez' HED jitter, alpha ~ U(1±σ), beta ~ U(±σ) per stain on natural-log OD (σ = 0.1: 7.3
    grey levels on Kaggle patches), as one matrix per image: ~4× less CPU than unmixing pixels."""
    alpha = rng.uniform(1 - sigma, 1 + sigma, (len(batch), 3))
    beta = rng.uniform(-sigma, sigma, (len(batch), 3))
    matrix, offset = _hed_affine(np.float32(alpha), np.float32(beta))
    od = np.matmul(_OD[np.asarray(batch)].reshape(len(batch), -1, 3), -matrix)
    od -= offset - np.float32(np.log(I0))  # I0 · exp(od) as exp(od + ln I0)
    rgb = np.exp(od, out=od)
    rgb -= np.float32(0.5)  # - 1 + 0.5: the uint8 cast truncates, so this rounds half up
    return np.clip(rgb, 0, 255, out=rgb).astype(np.uint8).reshape(np.shape(batch))


def rgb_to_lab(rgb, xp=np):
    """Reinhard's lαβ (float32) of RGB, numpy or ``xp=keras.ops`` (0 is read as 1: finite log)."""
    lms = xp.matmul(xp.maximum(rgb, np.float32(1)), _F32["LMS_FROM_RGB"].T)
    return xp.matmul(xp.log10(xp.maximum(lms, 1.0)), _F32["LAB_FROM_LOGLMS"].T)


def reinhard_target(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Target lαβ means and stds: averages over up to 2,000 images, as no one patch is typical."""
    lab = rgb_to_lab(np.asarray(images[:2000])).reshape(len(images[:2000]), -1, 3)
    return lab.mean(axis=1).mean(axis=0).tolist(), lab.std(axis=1).mean(axis=0).tolist()


def reinhard_normalise(batch, means, stds, eps: float = 1e-3, xp=np):
    """Each image moved to the target lαβ ``means`` and ``stds``: uint8, or float32 via ``ops``."""
    lab = rgb_to_lab(batch, xp)
    mu, sd = xp.mean(lab, axis=(1, 2), keepdims=True), xp.std(lab, axis=(1, 2), keepdims=True)
    lab = (lab - mu) / (sd + eps) * np.float32(stds) + np.float32(means)
    lms = xp.power(10.0, xp.matmul(lab, _F32["LOGLMS_FROM_LAB"].T))
    rgb = xp.matmul(lms, _F32["RGB_FROM_LMS"].T)
    return rgb if xp is ops else np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _like(y, x):
    """``y`` as pixels like ``x``: rounded, clipped to 0–255 and cast to its dtype."""
    return ops.cast(ops.clip(ops.round(y), 0, 255), x.dtype)


class _RandomLayer(keras.layers.Layer):
    """Seeded, the identity unless training. Keras saves the arguments given to ``__init__`` as
    the config, so a subclass's own ``__init__`` names its strength as the setting it is."""

    def __init__(self, strength=None, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.strength, self.seed = strength, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        return _like(self.augment(ops.cast(x, "float32")), x) if training else x

    def _uniform(self, x, shape, low=0.0, high=1.0):
        return keras.random.uniform((ops.shape(x)[0], *shape), low, high, seed=self.seed_generator)


class RandomDihedral(_RandomLayer):
    """One of the 8 dihedral views per image (transpose, flip up-down, flip left-right: 3 coins)."""

    def augment(self, y):
        coins = self._uniform(y, (3, 1, 1, 1)) < 0.5  # (n, 3, 1, 1, 1)
        y = ops.where(coins[:, 0], ops.transpose(y, (0, 2, 1, 3)), y)
        y = ops.where(coins[:, 1], ops.flip(y, axis=1), y)
        return ops.where(coins[:, 2], ops.flip(y, axis=2), y)


class RandomShift(_RandomLayer):
    """:func:`random_shift` as a gather: whole pixels, the border mirrored in, no wrap-around."""

    def __init__(self, shift: float, seed: int | None = None, **kwargs):
        super().__init__(shift, seed, **kwargs)

    def augment(self, y):
        n, (h, w, c), s = ops.shape(y)[0], y.shape[1:], int(self.strength)
        d = keras.random.randint((n, 2), -s, s + 1, seed=self.seed_generator)
        # Content moves by +d; an index past an edge is mirrored back (numpy's "reflect").
        rows = (h - 1) - ops.abs((h - 1) - ops.abs(ops.arange(h)[None, :] - d[:, :1]))
        cols = (w - 1) - ops.abs((w - 1) - ops.abs(ops.arange(w)[None, :] - d[:, 1:]))
        flat = ops.arange(n)[:, None, None] * (h * w) + rows[:, :, None] * w + cols[:, None, :]
        y = ops.take(ops.reshape(y, (-1, c)), ops.reshape(flat, (-1,)), axis=0)
        return ops.reshape(y, (n, h, w, c))


class HEDJitter(_RandomLayer):
    """:func:`hed_jitter` in the graph: the same σ, the same per-image affine map."""

    def __init__(self, sigma: float, seed: int | None = None, **kwargs):
        super().__init__(sigma, seed, **kwargs)

    def augment(self, y):
        factors = self._uniform(y, (2, 3), -self.strength, self.strength)  # alpha - 1, beta
        matrix, offset = _hed_affine(1.0 + factors[:, 0], factors[:, 1], ops)
        od = -ops.log((ops.reshape(y, (ops.shape(y)[0], -1, 3)) + 1.0) / I0)
        return ops.reshape(I0 * ops.exp(-(ops.matmul(od, matrix) + offset)) - 1.0, ops.shape(y))


class RandomColour(_RandomLayer):
    """:func:`jitter_colour` as a layer, of the same strength (see :func:`_colour_affine`)."""

    def augment(self, y):
        u = self._uniform(y, (1, 1, 5), -1.0, 1.0)
        scale, offset = _colour_affine(ops.mean(y, axis=(1, 2, 3), keepdims=True), u, self.strength)
        return y * scale + offset


class ReinhardNormalization(keras.layers.Layer):
    """:func:`reinhard_normalise` in the model, also at inference; the target is in the config."""

    def __init__(self, means, stds, eps: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.means, self.stds, self.eps = means, stds, eps

    def call(self, x):
        y = reinhard_normalise(ops.cast(x, "float32"), self.means, self.stds, self.eps, ops)
        return _like(y, x)


# Registered, so that saved models with these layers load without ``custom_objects``.
for _layer in (RandomDihedral, RandomShift, HEDJitter, RandomColour, ReinhardNormalization):
    keras.saving.register_keras_serializable(package="pcamlib")(_layer)


def host_augmentation(config) -> dict:
    """The :class:`~pcamlib.stream.PatchStream` arguments that augment on the host."""
    keys = ("augment", "shift", "color_jitter", "hed_jitter")
    return {k: getattr(config, k) for k in keys} if config.augment_on == "host" else {}


def model_front(config, images=None, rows=None) -> list[keras.layers.Layer]:
    """The layers in front of the training model: stain normalisation (its target from an evenly
    spaced 2,000 of the training ``images[rows]``), then augmentation."""
    front: list[keras.layers.Layer] = []
    if config.stain_norm == "reinhard":
        if images is None or rows is None:
            raise ValueError("stain_norm='reinhard' needs training images[rows] for its target")
        target = reinhard_target(images[np.sort(rows[:: max(1, len(rows) // 2000)])])
        front.append(ReinhardNormalization(*target, name="stain_norm"))
    steps = [(RandomDihedral, config.augment, "dihedral"), (RandomShift, config.shift, "shift")]
    steps += [(HEDJitter, config.hed_jitter, "hed"), (RandomColour, config.color_jitter, "colour")]
    for i, (layer, strength, name) in enumerate(steps if config.augment_on == "model" else []):
        if strength:  # seeds: config.seed + 0..3
            front.append(layer(strength, config.seed + i, name=f"aug_{name}"))
    return front


def with_input_layers(model: keras.Model, front: list[keras.layers.Layer]) -> keras.Model:
    """``model`` with ``front`` applied to its input first: a clone reusing every layer, flat
    (not nested), so ``get_layer``, parameter counts and Grad-CAM see the model as it was."""
    if not front:
        return model
    (patch,) = model.inputs
    inputs = x = keras.Input(batch_shape=patch.shape, dtype=patch.dtype, name=patch.name)
    for layer in front:
        x = layer(x)

    def call(layer, *args, **kwargs):  # the layers that read the patch read the front's output
        return layer(*(x if a is inputs else a for a in args), **kwargs)

    return keras.models.clone_model(
        model, input_tensors=inputs, clone_function=lambda layer: layer, call_function=call
    )
