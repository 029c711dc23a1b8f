"""TensorFlow Datasets' ``patch_camelyon`` as a pcamlib source (``pip install "pcamlib[tfds]"``).

``load_patches("tfds:patch_camelyon")`` (or ``pcam pack tfds:patch_camelyon``) lands here. TFDS
prepares the data (7.5 GB) in its data dir (``TFDS_DATA_DIR``, default ``~/tensorflow_datasets``)
the first time; pcamlib then packs the split once. ``tfds:NAME/SPLIT`` names a TFDS split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .sources import SPLITS, DataError, PatchSource, check_patch

TFDS_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError(
            "tfds:patch_camelyon needs tensorflow-datasets, which is not installed: "
            'pip install "pcamlib[tfds]"  (or: pip install tensorflow-datasets)'
        ) from None
    return tfds


@dataclass
class TfdsSource(PatchSource):
    """One TFDS split, read in file order; consecutive reads continue one iterator."""

    builder: Any = None
    tfds_split: str = ""
    block_reads: ClassVar[bool] = True

    def __post_init__(self):
        self._iterator, self._position = None, -1

    def where(self, index: int) -> str:
        return f"{self.name}[{index}] (id {self.ids[index]})"

    def _dataset(self, start: int, **kwargs):
        tfds = _import_tfds()
        split = self.tfds_split if start == 0 else f"{self.tfds_split}[{start}:]"
        # One file at a time: the order (and so every slice) is the same on every read.
        config = tfds.ReadConfig(interleave_cycle_length=1)
        return self.builder.as_dataset(
            split=split, shuffle_files=False, read_config=config, **kwargs
        )

    def read_many(self, start: int, stop: int) -> np.ndarray:
        if self._iterator is None or self._position != start:
            self._iterator = iter(self._dataset(start).as_numpy_iterator())
        images = []
        for index in range(start, stop):
            example = next(self._iterator)
            item_id = _text(example["id"])
            if item_id != self.ids[index]:
                raise DataError(f"{self.where(index)}: read id {item_id!r}; TFDS order changed")
            images.append(check_patch(np.asarray(example["image"]), self.where(index)))
        self._position = stop
        return np.stack(images)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def tfds_source(spec: str, split: str = "train", download: bool = True) -> TfdsSource:
    """``tfds:patch_camelyon[/TFDS_SPLIT]`` → a source; downloads and prepares it when asked."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    tfds = _import_tfds()
    name, _, explicit = spec.removeprefix("tfds:").partition("/")
    tfds_split = explicit or TFDS_SPLITS.get(split, split)
    try:
        builder = tfds.builder(name)
    except Exception as exc:
        raise DataError(f"{spec}: unknown TFDS dataset ({type(exc).__name__}: {exc})") from None
    if download:
        builder.download_and_prepare()
    if tfds_split not in builder.info.splits:
        raise DataError(f"{spec}: no split {tfds_split!r}; has {sorted(builder.info.splits)}")
    name = f"tfds:{builder.info.full_name}/{tfds_split}"
    source = TfdsSource(name, ids=[], labels=None, builder=builder, tfds_split=tfds_split)
    # Ids and labels up front (images are not decoded for this pass).
    skip = {"image": tfds.decode.SkipDecoding()}
    labels = []
    for example in source._dataset(0, decoders=skip).as_numpy_iterator():
        source.ids.append(_text(example["id"]))
        labels.append(int(example["label"]))
    source.labels = np.asarray(labels, np.int8)
    return source
