"""Pack once, stream many epochs: a verified uint8 memmap cache of decoded patches.

Decoding TIFF/JPEG runs at a few thousand images/s on 2 cores; a memmap reads at 60k+.
``pack`` decodes every item once, in parallel, chunk by chunk, recording progress after each
chunk so a killed run resumes where it stopped. It finishes atomically (a cache directory is
either complete with its ``meta.json`` or not a cache), and ``PackedCache.open`` checks shape,
dtype, count and content checksums.

Layout of a cache directory::

    images.npy   (N, 96, 96, 3) uint8, a plain .npy readable with np.load(mmap_mode="r")
    index.csv    id, label (-1 when unlabelled), group (slide, when known)
    meta.json    source name + fingerprint, count, per-chunk blake2b checksums
    excluded.csv items left out on request (only with on_error="exclude")
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .sources import PATCH_SHAPE, DataError, PatchSource, Problem, format_problems, open_source

CHUNK = 1024
FORMAT_VERSION = 1


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file in the same folder + rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _digest(block: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(block).data, digest_size=16).hexdigest()


@dataclass
class PackedCache:
    """An opened cache: ``images`` is a read-only memmap, never loaded whole into RAM."""

    path: Path
    images: np.ndarray
    ids: list[str]
    labels: np.ndarray | None
    groups: np.ndarray | None
    meta: dict

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def open(cls, path: str | os.PathLike, verify: str = "quick") -> PackedCache:
        """Open and check a cache. ``verify``: 'full' hashes every chunk, 'quick' a sample, 'none'."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{path}: not a finished pcamlib cache (no meta.json)")
        meta = json.loads(meta_path.read_text())
        images = np.load(path / "images.npy", mmap_mode="r")
        expected = (meta["count"], *PATCH_SHAPE)
        if images.shape != expected or images.dtype != np.uint8:
            raise DataError(
                f"{path}/images.npy: {images.shape} {images.dtype}, meta.json says {expected} uint8"
            )
        index = pd.read_csv(path / "index.csv", dtype={"id": str, "group": str}, keep_default_na=False)
        if len(index) != meta["count"]:
            raise DataError(f"{path}/index.csv: {len(index)} rows, meta.json says {meta['count']}")
        _verify_chunks(path, images, meta["chunk_digests"], verify)
        labels = index["label"].to_numpy(np.int8)
        groups = index["group"].to_numpy() if "group" in index and (index["group"] != "").all() else None
        return cls(path, images, index["id"].tolist(), None if (labels < 0).all() else labels,
                   groups, meta)


def _verify_chunks(path: Path, images: np.ndarray, digests: list[str], verify: str) -> None:
    if verify == "none":
        return
    chunks = range(len(digests))
    if verify == "quick" and len(digests) > 8:
        rng = np.random.default_rng(len(digests))
        chunks = sorted({0, len(digests) - 1, *rng.choice(len(digests), 6, replace=False).tolist()})
    for c in chunks:
        if _digest(images[c * CHUNK:(c + 1) * CHUNK]) != digests[c]:
            raise DataError(
                f"{path}/images.npy: checksum mismatch in chunk {c} (images {c * CHUNK}–"
                f"{min((c + 1) * CHUNK, len(images)) - 1}); the cache is corrupt, delete it and re-pack"
            )


def default_cache_dir(source: PatchSource, split: str, data_root: Path | None) -> Path:
    """Next to the data when writable (``DATA/.pcam-cache/SPLIT``), else a per-user cache dir."""
    configured = os.environ.get("PCAM_CACHE_DIR")
    key = hashlib.blake2b(source.name.encode(), digest_size=6).hexdigest()
    if configured:
        return Path(configured) / f"{split}-{key}"
    if data_root is not None and data_root.is_dir() and os.access(data_root, os.W_OK):
        return data_root / ".pcam-cache" / split
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pcamlib" / f"{split}-{key}"


def _find_problems(source: PatchSource, workers: int, progress: bool) -> list[Problem]:
    """Decode everything once just to list the offenders by name (only called after a failure)."""
    def check(i: int) -> Problem | None:
        try:
            source.read(i)
        except DataError as exc:
            return Problem(source.ids[i], str(source.paths[i]) if source.paths else source.name,
                           str(exc).split(": ", 1)[-1])
        return None

    with ThreadPoolExecutor(workers) as pool:
        found = pool.map(check, range(len(source)))
        return [p for p in tqdm(found, total=len(source), desc="checking", disable=not progress) if p]


def pack(
    source: PatchSource | str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "train",
    on_error: str = "raise",
    workers: int | None = None,
    progress: bool = True,
) -> PackedCache:
    """Decode ``source`` into a cache at ``out``; resumes an interrupted pack of the same source.

    ``on_error='raise'`` (default) stops with every offending item named; ``'exclude'`` leaves
    them out and lists them in ``excluded.csv``. Nothing is ever dropped silently.
    """
    if on_error not in ("raise", "exclude"):
        raise ValueError(f"on_error must be 'raise' or 'exclude', got {on_error!r}")
    if not isinstance(source, PatchSource):
        source = open_source(source, split)
    out = Path(out)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    if source.problems:
        if on_error == "raise":
            raise DataError(format_problems(source.problems, f"{source.name}") +
                            "\n(pass on_error='exclude' / --exclude-bad to leave them out, listed)")
        source = source.drop([])  # already excluded by the reader; keep its list
    if len(source) == 0:
        raise DataError(f"{source.name}: no images to pack")
    if (out / "meta.json").is_file():
        cache = PackedCache.open(out, verify="quick")
        if cache.meta["fingerprint"] == source.fingerprint():
            return cache
        for name in ("meta.json", "images.npy", "index.csv", "excluded.csv"):  # source changed
            (out / name).unlink(missing_ok=True)
    try:
        return _pack_chunks(source, out, workers, progress)
    except DataError:
        problems = _find_problems(source, workers, progress)
        if not problems:
            raise
        if on_error == "raise":
            raise DataError(format_problems(problems, f"{source.name}") +
                            "\n(pass on_error='exclude' / --exclude-bad to leave them out, listed)") from None
        shutil.rmtree(out / ".partial", ignore_errors=True)
        return _pack_chunks(source.drop(problems), out, workers, progress)


def _pack_chunks(source: PatchSource, out: Path, workers: int, progress: bool) -> PackedCache:
    fingerprint = source.fingerprint()
    work = out / ".partial"
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    if state is None or state["fingerprint"] != fingerprint:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        np.lib.format.open_memmap(work / "images.npy", "w+", np.uint8, (len(source), *PATCH_SHAPE))
        state = {"fingerprint": fingerprint, "done_chunks": 0, "digests": []}
        atomic_write_text(state_path, json.dumps(state))
    images = np.load(work / "images.npy", mmap_mode="r+")
    n_chunks = -(-len(source) // CHUNK)
    start_time = time.perf_counter()
    start_chunk = state["done_chunks"]

    def read(i: int) -> np.ndarray:
        return source.read(i)

    with ThreadPoolExecutor(workers) as pool, tqdm(
        total=len(source), initial=start_chunk * CHUNK, unit="img", desc=f"packing {out.name}",
        disable=not progress,
    ) as bar:
        for c in range(start_chunk, n_chunks):
            lo, hi = c * CHUNK, min((c + 1) * CHUNK, len(source))
            if hasattr(source, "x_path"):  # HDF5: one sliced read beats per-item reads
                block = source.read_many(lo, hi)
            else:
                block = np.stack(list(pool.map(read, range(lo, hi))))
            images[lo:hi] = block
            images.flush()
            state["digests"].append(_digest(block))
            state["done_chunks"] = c + 1
            atomic_write_text(state_path, json.dumps(state))
            bar.update(hi - lo)
    del images
    elapsed = time.perf_counter() - start_time
    _finalise(source, out, work, state["digests"], fingerprint)
    cache = PackedCache.open(out, verify="none")
    if progress:
        rate = (len(source) - start_chunk * CHUNK) / max(elapsed, 1e-9)
        pos = int((cache.labels == 1).sum()) if cache.labels is not None else "?"
        tqdm.write(f"packed {len(cache)} patches ({pos} tumour) into {out} at {rate:,.0f} img/s")
    return cache


def _finalise(source: PatchSource, out: Path, work: Path, digests: list[str], fp: str) -> None:
    """Write index + meta, then move the array into place; meta.json last marks completion."""
    labels = source.labels if source.labels is not None else np.full(len(source), -1, np.int8)
    index = pd.DataFrame({"id": source.ids, "label": labels})
    if source.groups is not None:
        index["group"] = source.groups
    atomic_write_text(work / "index.csv", index.to_csv(index=False))
    os.replace(work / "images.npy", out / "images.npy")
    os.replace(work / "index.csv", out / "index.csv")
    if source.problems:
        frame = pd.DataFrame([p.__dict__ for p in source.problems])
        atomic_write_text(out / "excluded.csv", frame.to_csv(index=False))
    meta = {
        "format": FORMAT_VERSION, "source": source.name, "fingerprint": fp,
        "count": len(source), "shape": list(PATCH_SHAPE), "dtype": "uint8", "chunk": CHUNK,
        "chunk_digests": digests, "excluded": len(source.problems),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1))
    shutil.rmtree(work, ignore_errors=True)


def load_patches(
    data: str | os.PathLike | PatchSource,
    split: str = "train",
    *,
    cache_dir: str | os.PathLike | None = None,
    on_error: str = "raise",
    groups_csv: str | os.PathLike | None = None,
    progress: bool = True,
) -> PackedCache:
    """The one call: a data path (any supported layout) or a cache dir → an opened cache.

    Packs transparently on first use and reuses the cache while the source is unchanged.
    """
    if not isinstance(data, PatchSource) and (Path(data) / "meta.json").is_file():
        return PackedCache.open(data)
    source = data if isinstance(data, PatchSource) else open_source(data, split, groups_csv)
    if source.problems and on_error == "raise":
        raise DataError(format_problems(source.problems, source.name) +
                        "\n(pass on_error='exclude' / --exclude-bad to leave them out, listed)")
    root = None if isinstance(data, PatchSource) or str(data).startswith("tfds:") else Path(data)
    out = Path(cache_dir) if cache_dir else default_cache_dir(source, split, root)
    out.mkdir(parents=True, exist_ok=True)
    return pack(source, out, split=split, on_error=on_error, progress=progress)
