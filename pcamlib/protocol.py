"""The evaluation protocol: three disjoint parts of the labelled data, recorded in every run.

* **test**: only reported; drawn from the data alone (labels, slide groups, ``test_fraction``,
  the fixed :data:`PROTOCOL_SEED`), so every run on the same data is reported on the same rows;
* **val**: picks the epoch (``best.keras``); drawn from the rest with the run's seed;
* **train**: what is left.

With a patch→slide map the parts are slide-grouped. Both fractions are shares of all labelled
rows. ``split="pcam"`` takes PCam's own splits instead (:func:`pcam_parts`): train, valid (val)
and test, slide-disjoint by construction; a stratified or slide split of data holding several
PCam splits is drawn from its PCam train rows alone. ``split.csv`` in a run directory records
the parts (``id,label,subset,split,content``): ``content`` is each patch's pixel hash
(:func:`pcamlib.cache.content_hash`), so which patches a run saw is decided by content, not by
file names, which other datasets repeat.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import PackedCache, first_bad_hash
from .data import split_indices

PROTOCOL_SEED = 16  # fixed: the test rows are a property of the data, not of a run
SUBSETS = ("train", "val", "test")


def protocol_split(
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    seed: int = 42,
    val_fraction: float = 0.25,
    test_fraction: float = 0.2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted row indices ``(train, val, test)``; ``test_fraction=0`` leaves test empty.

    Examples:
        >>> train, val, test = protocol_split(cache.labels, seed=1, val_fraction=0.25)
        >>> len(train), len(val), len(test)  # 1,600 sample patches; test is seed-independent
        (880, 400, 320)
    """
    labels = np.asarray(labels)
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not (0 < val_fraction and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) must be > 0 and leave training rows beside "
            f"test_fraction ({test_fraction}): their sum must be < 1"
        )
    rest, test = np.arange(len(labels)), np.arange(0)
    if test_fraction:
        rest, test = split_indices(labels, test_fraction, PROTOCOL_SEED, groups)
    inner = None if groups is None else np.asarray(groups)[rest]
    train, val = split_indices(labels[rest], val_fraction / (1 - test_fraction), seed, inner)
    return rest[train], rest[val], test


PCAM_ID = r"(train|valid|test)/\d+"  # the ids pcamlib.sources.pcam_h5 gives


def pcam_parts(ids: Iterable[str]) -> np.ndarray | None:
    """Each row's PCam split ('train', 'valid' or 'test') when every id is one that
    :func:`pcamlib.sources.pcam_h5` gives (``valid/7``), else None (not PCam's HDF5 data)."""
    parts = pd.Series(list(ids), dtype=object).str.extract(f"^{PCAM_ID}$", expand=False)
    return None if parts.empty or parts.isna().any() else parts.to_numpy(dtype=object)


def read_split(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's ``split.csv`` (ids as strings), checked: known subsets, no id twice, hashes.

    Runs made before the protocol have no ``test`` rows, and runs made before content hashes
    no ``content`` column; both are still read.
    """
    path = Path(run_dir) / "split.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no split.csv (is {run_dir} a training run directory?)")
    split = pd.read_csv(path, dtype={"id": str, "content": str}, keep_default_na=False)
    missing = {"id", "subset"} - set(split.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    bad = ~split["subset"].isin(SUBSETS)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{path}: row {i + 2} has subset {split['subset'].iloc[i]!r}; "
            f"expected one of {', '.join(SUBSETS)}"
        )
    twice = split["id"].duplicated()
    if twice.any():
        raise ValueError(f"{path}: id {split['id'][twice].iloc[0]} is listed twice")
    if "content" in split:
        i = first_bad_hash(split["content"])
        if i is not None:
            raise ValueError(
                f"{path}: row {i + 2} has content {split['content'].iloc[i]!r}; "
                "expected 16 hex digits (pcamlib.cache.content_hash)"
            )
    return split


def seen_rows(
    cache: PackedCache, *, ids: Iterable[str] = (), content: Iterable[str] = ()
) -> np.ndarray:
    """Mask of the rows of ``cache`` whose id is in ``ids`` or whose pixel hash is in ``content``.

    For the leaderboard: ``content=`` a run's training hashes (split.csv), ``ids=`` the sample
    ids with a twin in a model's training data (:func:`read_overlap`).
    """
    by_id = pd.Series(cache.ids, dtype=object).isin(set(ids))
    by_content = pd.Series(cache.content, dtype=object).isin(set(content))
    return (by_id | by_content).to_numpy()


OVERLAP_COLUMNS = ["id", "split", "label", "match", "match_label", "distance"]


def read_overlap(path: str | os.PathLike, split: str | None = None) -> set[str]:
    """Sample ids listed in an overlap CSV (``benchmarks/overlap.py``), of one ``split`` or all.

    Each listed patch has a near-identical twin (the same tissue, re-encoded) in a model's
    training data, so scores of that model leave them out.
    """
    path = Path(path)
    frame = pd.read_csv(path, dtype={"id": str, "split": str}, keep_default_na=False)
    missing = [c for c in OVERLAP_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)} (see benchmarks/overlap.py)"
        )
    bad = ~frame["split"].isin(["train", "test"])
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{path}: row {i + 2} has split {frame['split'].iloc[i]!r}; expected train/test"
        )
    if split is not None:
        frame = frame[frame["split"] == split]
    return set(frame["id"])


def fingerprint(ids) -> str:
    """A short hash of a set of ids: equal fingerprints, same rows (the leaderboard checks it)."""
    text = "\n".join(sorted(map(str, ids)))
    return hashlib.sha1(text.encode()).hexdigest()[:12]
