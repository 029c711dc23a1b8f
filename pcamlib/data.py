"""Splits and streaming: shuffled uint8 batches from a packed memmap, never all in RAM.

``PatchStream`` is a ``keras.utils.PyDataset``, so one class feeds every backend (on
TensorFlow Keras wraps it in a prefetching ``tf.data`` pipeline). A batch is one fancy-index
read of sorted rows from the memmap; the per-epoch order depends only on (seed, epoch), so
a resumed run sees the same batches it would have seen.
"""

from __future__ import annotations

import keras
import numpy as np

from .augment import dihedral, jitter_colour, random_shift
from .augment import hed_jitter as jitter_hed
from .sources import DataError

__all__ = ["PatchStream", "dihedral", "jitter_colour", "random_shift", "split_indices"]


def split_indices(
    labels: np.ndarray,
    val_fraction: float = 0.25,
    seed: int = 42,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (default) or slide-grouped train/validation split of row indices.

    With ``groups`` (slide per patch) no slide lands on both sides: patches of one slide are
    strongly correlated, and a random split inflates validation AUC.
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    labels = np.asarray(labels)
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    index = np.arange(len(labels))
    if groups is None:
        train, val = train_test_split(
            index, test_size=val_fraction, stratify=labels, random_state=seed
        )
    else:
        n_groups = len(np.unique(groups))
        n_splits = max(2, round(1 / val_fraction))
        if n_groups < n_splits:
            raise DataError(
                f"only {n_groups} slide group(s): cannot hold out {val_fraction:.0%} by slide"
            )
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        train, val = next(folds.split(index, labels, groups))
    return np.sort(train), np.sort(val)


class PatchStream(keras.utils.PyDataset):
    """Batches ``(uint8 images, float32 labels)`` read from the rows ``indices`` of a memmap.

    Args:
        images: (N, 96, 96, 3) uint8 array or memmap (``PackedCache.images``).
        labels: (N,) 0/1 labels, or None for prediction (batches are then ``(images,)``).
        indices: rows to use (default all), e.g. from :func:`split_indices`.
        shuffle: a new order every epoch (see :meth:`set_epoch`).
        augment: a random dihedral view per image (tissue has no orientation).
        shift: random translation of up to ``shift`` pixels per axis, the border mirrored in.
        color_jitter: strength c of brightness (±c·128), contrast (×1±c) and per-channel gain
            (×1±c/2) jitter.
        hed_jitter: HED stain jitter strength σ (:func:`pcamlib.augment.hed_jitter`), the standard
            stain augmentation for slides from other centres.
        crop: centre-crop to ``crop``×``crop`` pixels (None: the full 96).
        workers: Keras PyDataset threads; 1 (default) lets tf.data prefetch batches.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        indices: np.ndarray | None = None,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        augment: bool = False,
        shift: int = 0,
        color_jitter: float = 0.0,
        hed_jitter: float = 0.0,
        crop: int | None = None,
        seed: int = 0,
        workers: int = 1,
    ):
        super().__init__(workers=workers, use_multiprocessing=False)
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        side = images.shape[1]
        if crop is not None and not 0 < crop <= side:
            raise ValueError(f"crop must be in 1..{side}, got {crop}")
        self.images, self.labels = images, labels
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices)
        if len(self.indices) == 0:
            raise DataError("no images to stream (empty index)")
        if self.indices.min() < 0 or self.indices.max() >= len(images):
            raise IndexError(f"indices outside 0..{len(images) - 1}")
        if shift < 0 or not 0 <= color_jitter < 1 or not 0 <= hed_jitter < 1:
            raise ValueError(
                "need shift ≥ 0, 0 ≤ color_jitter < 1, 0 ≤ hed_jitter < 1; "
                f"got {shift}, {color_jitter}, {hed_jitter}"
            )
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.shift, self.color_jitter, self.hed_jitter = shift, color_jitter, hed_jitter
        offset = (side - crop) // 2 if crop else 0
        self._window = slice(offset, offset + crop) if crop else slice(None)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch``'s order (used when resuming); it depends on (seed, epoch) only."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        self._order = rng.permutation(self.indices) if self.shuffle else self.indices

    def on_epoch_end(self) -> None:
        # Keras calls this after every epoch (and once before the first): next order.
        self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        # Sorted rows read the memmap front to back; order inside a batch does not matter.
        rows = np.sort(self._order[i * self.batch_size : (i + 1) * self.batch_size])
        x = self.images[rows, self._window, self._window]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.augment:
            x = dihedral(x, rng.integers(0, 8, len(x)))
        if self.shift:
            x = random_shift(x, self.shift, rng)
        if self.hed_jitter:
            x = jitter_hed(x, self.hed_jitter, rng)
        if self.color_jitter:
            x = jitter_colour(x, self.color_jitter, rng)
        if self.labels is None:
            return (x,)
        return x, np.asarray(self.labels[rows], np.float32)
