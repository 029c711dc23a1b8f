"""Atomic file writes: readers see the old file or the new one, never half of either.

A temp file in the target's folder (same file system: the rename is atomic) is fsynced, then
``os.replace``-d over the target. ``durable=True`` fsyncs the folder too, so the rename survives
a power cut: for files that mark something as done (``meta.json``, a checkpoint, a submission).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text"]


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """A temp path next to ``path`` to write to; on success it replaces ``path``, else vanishes.

    The temp name keeps the suffix (``.x.keras`` → ``.x.<random>.tmp.keras``) for writers that
    check it. The result is readable by others (0644), like the files it replaces.

    Examples:
        >>> with atomic_path("submission.csv", durable=True) as tmp:
        ...     frame.to_csv(tmp, index=False)
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; caches and run dirs may be shared
        _fsync(tmp, os.O_RDWR)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and os.name == "posix":  # Windows cannot open a folder to fsync it
        _fsync(path.parent, os.O_RDONLY)


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = False) -> None:
    """Replace ``path`` by ``text`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(text)
