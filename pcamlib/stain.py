"""H&E stain space in numpy (host side, figures, tests); the Keras layers share its matrices.

* **HED jitter** (Tellez et al. 2019): unmix RGB into haematoxylin, eosin and DAB optical
  densities (Ruifrok & Johnston matrix; ``OD = -ln((I + 1) / 256)`` as in Macenko et al.
  2009), draw ``alpha ~ U(1±σ)``, ``beta ~ U(±σ)`` per image and stain, mix back. σ = 0.05
  moves pixels by 3.7 grey levels on average, σ = 0.1 by 7.3 (256 Kaggle patches); this σ is
  not scikit-image's ``rgb2hed`` scale, which divides OD by ln(10⁶) ≈ 13.8.
* **Reinhard normalisation** (Reinhard et al. 2001): match each image's lαβ mean and std to
  a target's. Deterministic, so it must run at training *and* test time:
  :class:`pcamlib.augment_layers.ReinhardNormalization` does it inside the model.
"""

from __future__ import annotations

import numpy as np

# Ruifrok & Johnston (2001) stain vectors in optical density, rows H, E, DAB: scikit-image's
# ``skimage.color.rgb_from_hed``; ``HED_FROM_RGB`` is its inverse, ``skimage.color.hed_from_rgb``.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
I0 = 256.0  # incident light: OD = -ln((I + 1) / I0) is finite for I = 0 and 0 for white

# Reinhard's lαβ: RGB → LMS (linear), log10, then a decorrelating rotation.
LMS_FROM_RGB = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]]
)
LAB_FROM_LOGLMS = np.diag([3**-0.5, 6**-0.5, 2**-0.5]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)
RGB_FROM_LMS = np.linalg.inv(LMS_FROM_RGB)
LOGLMS_FROM_LAB = np.linalg.inv(LAB_FROM_LOGLMS)


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log((np.asarray(rgb, np.float32) + 1) / np.float32(I0))


_OD = _optical_density(np.arange(256))  # of each uint8 value: apply_hed looks them up


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """Stain concentrations (..., 3: H, E, DAB) of uint8 RGB, in optical density.

    Negative concentrations are kept (scikit-image clips them to 0): the transform is then
    exactly invertible, so an image with no jitter comes back unchanged.
    """
    return _optical_density(rgb) @ HED_FROM_RGB.astype(np.float32)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """uint8 RGB from stain concentrations (the inverse of :func:`rgb_to_hed`)."""
    rgb = np.float32(I0) * np.exp(-(hed @ RGB_FROM_HED.astype(np.float32))) - 1
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def hed_factors(n: int, sigma: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-image, per-stain ``alpha ~ U(1-σ, 1+σ)`` and ``beta ~ U(-σ, σ)``, each (n, 3)."""
    alpha = rng.uniform(1 - sigma, 1 + sigma, (n, 3)).astype(np.float32)
    beta = rng.uniform(-sigma, sigma, (n, 3)).astype(np.float32)
    return alpha, beta


def apply_hed(batch: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale (``alpha``) and shift (``beta``) each image's H, E and DAB, both (n, 3).

    ``hed_to_rgb(rgb_to_hed(x) * alpha + beta)`` folded into one 3×3 matrix and offset per
    image: ~4× less host CPU than the literal form.
    """
    n, shape = len(batch), np.shape(batch)
    matrix = (HED_FROM_RGB[None] * alpha[:, None, :]) @ RGB_FROM_HED  # (n, 3, 3)
    offset = (beta @ RGB_FROM_HED)[:, None, :]  # (n, 1, 3)
    od = np.matmul(_OD[np.asarray(batch)].reshape(n, -1, 3), -matrix.astype(np.float32))
    od -= offset.astype(np.float32)
    rgb = np.exp(od, out=od)
    rgb *= np.float32(I0)
    rgb -= np.float32(0.5)  # - 1 + 0.5: the uint8 cast truncates, so this rounds half up
    return np.clip(rgb, 0, 255, out=rgb).astype(np.uint8).reshape(shape)


def hed_jitter(batch: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Tellez' HED stain augmentation of a uint8 NHWC batch with strength ``sigma``."""
    return apply_hed(batch, *hed_factors(len(batch), sigma, rng))


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Reinhard's lαβ of uint8 RGB (0 is read as 1, so the log stays finite)."""
    lms = np.maximum(np.asarray(rgb, np.float32), 1.0) @ LMS_FROM_RGB.T.astype(np.float32)
    return np.log10(np.maximum(lms, 1.0)) @ LAB_FROM_LOGLMS.T.astype(np.float32)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """uint8 RGB from lαβ (the inverse of :func:`rgb_to_lab`, clipped to 0–255)."""
    lms = 10.0 ** (lab @ LOGLMS_FROM_LAB.T.astype(np.float32))
    rgb = lms @ RGB_FROM_LMS.T.astype(np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def reinhard_target(images: np.ndarray, limit: int = 2000) -> tuple[list[float], list[float]]:
    """Target lαβ means and standard deviations: the averages over (up to ``limit``) images.

    An average over many training patches: no single hand-picked patch is typical of a centre.
    """
    x = np.asarray(images[: min(limit, len(images))])
    lab = rgb_to_lab(x).reshape(len(x), -1, 3)
    return lab.mean(axis=1).mean(axis=0).tolist(), lab.std(axis=1).mean(axis=0).tolist()


def reinhard_normalise(batch: np.ndarray, means, stds, eps: float = 1e-3) -> np.ndarray:
    """Every image of a uint8 NHWC batch matched to the target lαβ ``means`` and ``stds``."""
    lab = rgb_to_lab(batch)
    mu = lab.mean(axis=(1, 2), keepdims=True)
    sd = lab.std(axis=(1, 2), keepdims=True)
    return lab_to_rgb((lab - mu) / (sd + eps) * np.float32(stds) + np.float32(means))
