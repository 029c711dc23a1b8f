"""Which rows a run trains, chooses and reports on (docs/protocol.md), and its batch stream:
test drawn from the data alone (every run on the same data reports on the same rows), val by
the run's seed, the rest train; ``split.csv`` records each row's part and pixel hash."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from .augment import dihedral, jitter_colour, random_shift
from .augment import hed_jitter as jitter_hed
from .cache import PackedCache, atomic_write_text, load_patches
from .config import SettingError, TrainConfig
from .pcam import H5_PATTERN, is_pcam_layout
from .pretrained import NAME, seen_mask
from .sources import SPLITS, DataError

PROTOCOL_SEED = 16  # fixed: the test rows are a property of the data, not of a run
SUBSETS = ("train", "val", "test")
PCAM_ID = r"(train|valid|test)/\d+"  # the ids pcamlib.pcam.pcam_h5 gives
OVERLAP_COLUMNS = ["id", "split", "label", "match", "match_label", "distance"]


def split_indices(
    labels: np.ndarray, val_fraction: float = 0.25, seed: int = 42, groups=None
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified or, with ``groups`` (slide per patch), slide-grouped train/val row indices:
    patches of one slide are strongly correlated, and a random split inflates validation AUC."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    labels, index = np.asarray(labels), np.arange(len(labels))
    if groups is None:
        split = train_test_split(index, test_size=val_fraction, stratify=labels, random_state=seed)
        return np.sort(split[0]), np.sort(split[1])
    n_splits = max(2, round(1 / val_fraction))
    if (n_groups := len(np.unique(groups))) < n_splits:
        held = f"cannot hold out {val_fraction:.0%} by slide"
        raise DataError(f"only {n_groups} slide group(s): {held}")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train, val = next(folds.split(index, labels, groups))
    return np.sort(train), np.sort(val)


def protocol_split(
    labels: np.ndarray, groups=None, *, seed=42, val_fraction=0.25, test_fraction=0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted rows ``(train, val, test)``; fractions of all rows (``test_fraction=0``: no test)."""
    labels = np.asarray(labels)
    if not (0 <= test_fraction and 0 < val_fraction and val_fraction + test_fraction < 1):
        rows = f"val_fraction ({val_fraction}) > 0 and test_fraction ({test_fraction}) ≥ 0"
        raise ValueError(f"{rows} must leave training rows: their sum must be < 1")
    rest, test = np.arange(len(labels)), np.arange(0)
    if test_fraction:
        rest, test = split_indices(labels, test_fraction, PROTOCOL_SEED, groups)
    inner = None if groups is None else np.asarray(groups)[rest]
    train, val = split_indices(labels[rest], val_fraction / (1 - test_fraction), seed, inner)
    return rest[train], rest[val], test


def _first_bad(path: Path, frame: pd.DataFrame, column: str, bad: pd.Series, expected: str):
    """Refuse the csv row of the first ``bad`` value of ``column``, naming it."""
    if bad.any():
        i = int(np.argmax(bad))
        value = frame[column].iloc[i]
        raise ValueError(f"{path}: row {i + 2} has {column} {value!r}; expected {expected}")


def read_split(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's ``split.csv`` (ids as strings; ``attrs["path"]``), checked: known subsets, no id
    twice, content hashes."""
    path = Path(run_dir) / "split.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no split.csv (is {run_dir} a training run directory?)")
    split = pd.read_csv(path, dtype={"id": str, "content": str}, keep_default_na=False)
    if missing := {"id", "subset"} - set(split.columns):
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    _first_bad(path, split, "subset", ~split["subset"].isin(SUBSETS), "one of train, val, test")
    if (twice := split["id"].duplicated()).any():
        raise ValueError(f"{path}: id {split['id'][twice].iloc[0]} is listed twice")
    if "content" in split:
        hashes = "16 hex digits (pcamlib.cache.content_hash)"
        _first_bad(path, split, "content", ~split["content"].str.fullmatch("[0-9a-f]{16}"), hashes)
    split.attrs["path"] = path
    return split


def read_overlap(path: str | os.PathLike, split: str | None = None) -> set[str]:
    """Sample ids in an overlap CSV (``benchmarks/overlap.py``: each has a near-identical twin
    in a model's training data, so its scores leave them out), of one ``split`` or all."""
    path = Path(path)
    frame = pd.read_csv(path, dtype={"id": str, "split": str}, keep_default_na=False)
    if missing := [c for c in OVERLAP_COLUMNS if c not in frame.columns]:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (benchmarks/overlap.py)")
    _first_bad(path, frame, "split", ~frame["split"].isin(["train", "test"]), "one of train, test")
    return set(frame["id"] if split is None else frame["id"][frame["split"] == split])


def fingerprint(ids) -> str:
    """A short hash of a set of ids: equal fingerprints, same rows (the leaderboard checks it)."""
    return hashlib.sha1("\n".join(sorted(map(str, ids))).encode()).hexdigest()[:12]


def _needs_pcam(data, what: str) -> SettingError:
    files = H5_PATTERN.format(split="{train,valid,test}", xy="{x,y}")
    why = f"needs PCam's train, valid and test splits ({files}, as pcam download --source pcam"
    return SettingError("split", "pcam", f"{why} writes them); {data} {what}")


def training_cache(config: TrainConfig, cache: PackedCache | None = None) -> PackedCache:
    """``cache``, else ``config.data`` packed: labelled, with slides for split slide."""
    if cache is None and config.split == "pcam":  # a packed cache's ids tell later
        if not (is_pcam_layout(config.data) or (Path(config.data) / "meta.json").is_file()):
            raise _needs_pcam(config.data, "is not that layout")
    if cache is None:
        on_error = "exclude" if config.exclude_bad else "raise"
        where = dict(cache_dir=config.cache_dir, groups_csv=config.groups_csv)
        cache = load_patches(config.data, "train", on_error=on_error, **where)
    if cache.labels is None:
        raise ValueError(f"{config.data}: training needs labelled data")
    if config.split == "slide" and cache.groups is None:
        raise ValueError("split='slide' needs a patch→slide map (groups_csv, or PCam HDF5 meta)")
    return cache


def run_split(config: TrainConfig, cache: PackedCache, replicas: int):
    """Rows (train, val, test) of the protocol for this run, and each row's protocol part.
    Rows the init model trained on move to train; validation is trimmed to ``val_limit`` and
    to a multiple of the replicas (each needs an equal share of a batch)."""
    train_idx, val_idx, test_idx = _protocol_rows(config, cache)
    protocol = np.full(len(cache), "", dtype=object)
    protocol[train_idx], protocol[val_idx], protocol[test_idx] = "train", "val", "test"
    scored = np.concatenate([val_idx, test_idx])  # the rows whose overlap must be known
    seen = seen_mask(cache, scored) if config.init == NAME else np.zeros(len(cache), bool)
    if seen is None:
        unknown = "which patches the pretrained model trained on is unknown (Kaggle train data)"
        warnings.warn(f"{config.data}: {unknown}: its test score may count some", stacklevel=2)
        seen = np.zeros(len(cache), bool)
    # Rows it trained on go to train: never validate or test on them.
    train_idx = np.flatnonzero((protocol == "train") | (seen & (protocol != "")))
    val_idx, test_idx = (np.flatnonzero((protocol == p) & ~seen) for p in ("val", "test"))
    if config.val_limit is not None:
        per_class = [val_idx[cache.labels[val_idx] == c][: config.val_limit // 2] for c in (0, 1)]
        val_idx = np.sort(np.concatenate(per_class))
    val_idx = val_idx[: len(val_idx) - len(val_idx) % replicas]
    if config.batch_size * replicas > len(train_idx):
        rows = f"must be ≤ the {len(train_idx)} training rows"
        rows += f" / {replicas} replicas" if replicas > 1 else ""
        raise SettingError("batch_size", config.batch_size, rows)
    return train_idx, val_idx, test_idx, protocol


def _protocol_rows(config: TrainConfig, cache: PackedCache):
    """PCam's own splits with split pcam, else :func:`protocol_split` (of PCam train, if mixed)."""
    parts = pd.Series(cache.ids, dtype=object).str.extract(f"^{PCAM_ID}$", expand=False)
    found = set() if parts.isna().any() else set(parts)
    if config.split == "pcam" and found != set(SPLITS):
        what = f"holds only PCam's {' and '.join(sorted(found))} split"
        what = what if found else "has no PCam HDF5 ids (train/N, valid/N, test/N)"
        raise _needs_pcam(cache.path, what)
    if config.split == "pcam":
        return tuple(np.flatnonzero(parts == part) for part in SPLITS)
    pool = np.flatnonzero(parts == "train") if len(found) > 1 else np.arange(len(cache))
    groups = cache.groups[pool] if config.split == "slide" else None
    fractions = dict(val_fraction=config.val_fraction, test_fraction=config.test_fraction)
    rows = protocol_split(cache.labels[pool], groups, seed=config.seed, **fractions)
    return tuple(pool[r] for r in rows)  # test: the same rows for every run


def write_split(run_dir: Path, config: TrainConfig, cache: PackedCache, rows, protocol) -> None:
    """``split.csv``: the used rows' ids, labels, subsets, protocol parts and content hashes."""
    subset = np.full(len(cache), "", dtype=object)
    subset[rows[0]], subset[rows[1]], subset[rows[2]] = "train", "val", "test"
    split = pd.DataFrame({"id": cache.ids, "label": cache.labels, "subset": subset})
    split["split"], split["protocol"], split["content"] = config.split, protocol, cache.content
    atomic_write_text(run_dir / "split.csv", split[split.subset != ""].to_csv(index=False))


class PatchStream(keras.utils.PyDataset):
    """Batches ``(uint8 images, float32 labels)`` (``(images,)`` without labels) of the rows
    ``indices`` of an (N, 96, 96, 3) memmap; order and augmentation depend on (seed, epoch) only,
    so a resumed run sees the same batches. ``augment``: a random dihedral view; ``shift``: up to
    that many pixels, border mirrored; ``color_jitter`` c: brightness ±c·128, contrast ×1±c, gain
    ×1±c/2; ``hed_jitter``: HED stain σ; ``crop``: the centre pixels; ``workers``: threads."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        indices=None,
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
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices)
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if crop is not None and not 0 < crop <= images.shape[1]:
            raise ValueError(f"crop must be in 1..{images.shape[1]}, got {crop}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        if len(self.indices) == 0:
            raise DataError("no images to stream (empty index)")
        if self.indices.min() < 0 or self.indices.max() >= len(images):
            raise IndexError(f"indices outside 0..{len(images) - 1}")
        self.images, self.labels, self.batch_size, self.seed = images, labels, batch_size, seed
        self.shuffle, self.augment, self.shift = shuffle, augment, shift
        self.color_jitter, self.hed_jitter = color_jitter, hed_jitter
        offset = (images.shape[1] - crop) // 2 if crop else 0
        self._window = slice(offset, offset + crop) if crop else slice(None)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch``'s order (used when resuming)."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        self._order = rng.permutation(self.indices) if self.shuffle else self.indices

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)  # Keras calls this after every epoch

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        # Sorted rows read the memmap front to back; order inside a batch does not matter.
        rows = np.sort(self._order[i * self.batch_size : (i + 1) * self.batch_size])
        x = self.images[rows, self._window, self._window]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        x = dihedral(x, rng.integers(0, 8, len(x))) if self.augment else x
        x = random_shift(x, self.shift, rng) if self.shift else x
        x = jitter_hed(x, self.hed_jitter, rng) if self.hed_jitter else x
        x = jitter_colour(x, self.color_jitter, rng) if self.color_jitter else x
        return (x,) if self.labels is None else (x, np.asarray(self.labels[rows], np.float32))


class EpochBatches(keras.utils.PyDataset):
    """The first ``steps`` batches of each epoch of ``stream``, from batch 0 (with
    ``steps_per_epoch`` Keras carries one iterator across epochs: no resume could replay it)."""

    def __init__(self, stream: PatchStream, steps: int):
        super().__init__(workers=stream.workers)
        self.stream, self.steps = stream, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int):
        return self.stream[i]
