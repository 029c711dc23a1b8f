"""Shared input checks: 0/1 labels, and messages that name the first few offenders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["few", "first_bad", "labels01", "not01", "vector"]


def few(items: Sequence, limit: int = 5, fmt: Callable[[Any], str] = repr, sep: str = ", ") -> str:
    """The first ``limit`` items, formatted and joined, then ``(+N more)``: short, actionable."""
    shown = sep.join(fmt(x) for x in items[:limit])
    more = len(items) - limit
    return shown + (sep if "\n" in sep else " ") + f"(+{more} more)" if more > 0 else shown


def first_bad(mask: np.ndarray, values: np.ndarray, what: str) -> str:
    """``"3 bad labels: row 2: 7, row 5: -1, …"``: the offending rows of ``values`` by index."""
    rows = np.flatnonzero(mask)
    # tolist() makes numpy scalars plain Python values: ``2``, not ``np.int64(2)``.
    return f"{len(rows)} {what}: " + few(
        rows, fmt=lambda i: f"row {i}: {values[i : i + 1].tolist()[0]!r}"
    )


def not01(values: Any) -> np.ndarray:
    """True where a value is not a 0/1 label (NaN, other numbers and non-numbers included)."""
    return ~np.isin(np.asarray(values), (0, 1))


def vector(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-D array, an (N, 1) column flattened; any other shape is an error."""
    v = np.asarray(values)
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,) or (N, 1); got shape {v.shape}")
    return v


def labels01(values: Any, name: str = "labels") -> np.ndarray:
    """1-D 0/1 labels as int64 (bools and (N, 1) columns accepted), or an error naming bad rows."""
    y = vector(values, name)
    if len(y) == 0:
        raise ValueError(f"{name} is empty")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{name} must be numeric 0/1 labels; got dtype {y.dtype}")
    bad = not01(y)
    if bad.any():
        raise ValueError(f"{name} must contain only 0/1 labels; " + first_bad(bad, y, "bad labels"))
    return y.astype(np.int64)
