"""Label-preserving transforms of uint8 NHWC batches, shared by training and TTA.

Tissue has no canonical orientation, so the 8 dihedral views of a patch are equally valid
inputs: training draws one at random, test-time augmentation averages over all 8.
Pure numpy (no keras), so plotting and metrics code can use it too.
"""

from __future__ import annotations

import numpy as np

N_DIHEDRAL = 8


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


def shift_images(batch: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move image j's content by ``offsets[j] = (dy, dx)`` pixels; the border is mirrored in.

    No wrap-around, as in :class:`pcamlib.augment_layers.RandomShift` (the same, in the model).
    """
    n, h, w = batch.shape[:3]
    offsets = np.asarray(offsets)
    s = int(np.abs(offsets).max()) if n else 0
    if s >= min(h, w):
        raise ValueError(f"shifts of {s} px do not fit {h}×{w} patches")
    padded = np.pad(batch, ((0, 0), (s, s), (s, s), (0, 0)), mode="reflect")
    out = np.empty_like(batch)
    for j, (dy, dx) in enumerate(offsets):  # one slice copy per image: cheaper than a gather
        out[j] = padded[j, s - dy : s - dy + h, s - dx : s - dx + w]
    return out


def random_shift(batch: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Shift each image by its own random (dy, dx) in [-shift, shift] (see :func:`shift_images`)."""
    return shift_images(batch, rng.integers(-shift, shift + 1, (len(batch), 2)))


def jitter_colour(batch: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and per-channel gain per image, clipped back to uint8."""
    n = len(batch)
    x = batch.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    contrast = rng.uniform(1 - strength, 1 + strength, (n, 1, 1, 1)).astype(np.float32)
    gain = rng.uniform(1 - strength / 2, 1 + strength / 2, (n, 1, 1, 3)).astype(np.float32)
    bright = rng.uniform(-strength, strength, (n, 1, 1, 1)).astype(np.float32) * 128
    # ((x - mean) * contrast + mean) * gain + bright, as one multiply-add per pixel
    scale = contrast * gain
    x *= scale
    x += (mean * (1 - contrast) * gain + bright).astype(np.float32)
    return np.clip(x, 0, 255, out=x).astype(np.uint8)
