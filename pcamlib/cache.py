"""Pack once, stream many epochs: a verified uint8 memmap cache of decoded patches.

``pack`` decodes each item once (a few thousand/s; a memmap reads 50k+/s), in threads, chunk by
chunk: a killed run resumes at its last chunk. A cache holds ``images.npy``, ``index.csv`` (id,
label or -1, group, content: the pixel hash that finds repeated patches and corrupt rows),
``excluded.csv`` and ``meta.json``, written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import config
from .sources import PATCH_SHAPE, DataError, PatchSource, Problem, few, open_source

CHUNK = 1024  # images per resume point
FORMAT_VERSION = 4
QUICK_ROWS = 4096  # rows re-hashed by verify="quick": all of a small cache, a sample of a big one


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path next to ``path`` (same suffix, for writers that check it) that replaces
    ``path`` on success and vanishes on error: readers never see half a file."""
    path = Path(path)
    fd, name = tempfile.mkstemp(f".tmp{path.suffix}", f".{path.stem}.", path.parent)
    os.close(fd)
    try:
        yield Path(name)
        os.chmod(name, 0o644)  # mkstemp makes 0600; caches and run dirs may be shared
        with open(name, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def content_hash(image: np.ndarray) -> str:
    """A patch's identity: 16 hex digits of the SHA-1 of its pixels (how Kaggle named patches)."""
    return hashlib.sha1(np.ascontiguousarray(image, dtype=np.uint8).data).hexdigest()[:16]


def _digest(hashes: list[str]) -> str:
    return hashlib.sha1("".join(hashes).encode()).hexdigest()[:16]


@dataclass
class PackedCache:
    """An opened cache: ``images`` is a read-only memmap, never loaded whole into RAM."""

    path: Path
    images: np.ndarray
    ids: list[str]
    content: list[str]  # content_hash of each row: which patches are the same, whatever the id
    labels: np.ndarray | None
    groups: np.ndarray | None
    meta: dict

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def excluded(self) -> list[Problem]:  # left out by on_error='exclude'
        frame = pd.read_csv(self.path / "excluded.csv", dtype=str, keep_default_na=False)
        return [Problem(*row) for row in frame[["id", "where", "reason"]].itertuples(index=False)]

    @classmethod
    def open(cls, path: str | os.PathLike, verify: str = "quick") -> PackedCache:
        """Open and check a cache; ``verify`` re-hashes 'full': every row, 'quick': all of a
        small cache, both ends and a new random sample of a big one, 'none': no row."""
        meta, images, index = _read(path := Path(path))
        content, n = index["content"].tolist(), len(images)
        sample = sorted({0, n - 1, *np.random.default_rng().choice(n, QUICK_ROWS)})
        rows = {"full": range(n), "quick": sample if n > QUICK_ROWS else range(n), "none": []}
        for i in rows[verify]:
            if content_hash(images[i]) != content[i]:
                corrupt = "the cache is corrupt: delete it and pack again"
                raise DataError(
                    f"{path}/images.npy: row {i} does not match its content hash; {corrupt}"
                )
        labels = index["label"].astype(np.int8).to_numpy()
        groups = index["group"].to_numpy() if "group" in index else None
        labels = None if (labels < 0).all() else labels
        return cls(path, images, index["id"].tolist(), content, labels, groups, meta)


def _read(path: Path) -> tuple[dict, np.ndarray, pd.DataFrame]:
    """meta.json, images.npy and index.csv, each checked against meta.json; no pixel is read."""
    if not (path / "meta.json").is_file():
        raise DataError(f"{path}: not a finished pcamlib cache (no meta.json)")
    try:
        meta = json.loads((path / "meta.json").read_text())
        if (version := meta.get("format")) == FORMAT_VERSION:
            shape, digest = (meta["count"], *PATCH_SHAPE), meta["content_digest"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}/meta.json: unreadable ({type(exc).__name__}: {exc})") from None
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: cache format {version}, not this pcamlib's {FORMAT_VERSION}")
    try:
        images = np.load(path / "images.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}/images.npy: unreadable ({exc}); delete it and re-pack") from None
    if images.shape != shape or images.dtype != np.uint8:
        found = f"{images.shape} {images.dtype}"
        raise DataError(f"{path}/images.npy: {found}, meta.json says {shape} uint8")
    index = pd.read_csv(path / "index.csv", dtype=str, keep_default_na=False)
    if _digest(index.get("content", pd.Series()).tolist()) != digest:  # the row count too
        again = "delete the cache and pack again"
        raise DataError(f"{path}/index.csv: content hashes do not match meta.json; {again}")
    return meta, images, index


def default_cache_dir(source: PatchSource, split: str, data_root: Path | None) -> Path:
    """Where a cache of ``source`` goes unless told: $PCAM_CACHE_DIR; on Kaggle (read-only input)
    /kaggle/working; with persistent outputs ($PCAM_OUT, not in smoke runs) their ``cache/``, to
    survive; else beside the data when writable; else a per-user dir."""
    key = hashlib.blake2b(source.name.encode(), digest_size=6).hexdigest()
    if os.environ.get("PCAM_CACHE_DIR"):
        root = Path(os.environ["PCAM_CACHE_DIR"])
    elif config.on_kaggle():
        root = config.KAGGLE_WORKING / ".pcam-cache"
    elif os.environ.get("PCAM_OUT") and not config.smoke():
        root = Path(os.environ["PCAM_OUT"]) / "cache"
    elif data_root is not None and data_root.is_dir() and os.access(data_root, os.W_OK):
        # One cache per source, whatever split name asked for it (Kaggle train = "valid" too).
        kind = source.name.split(":", 1)[0]
        name = {"kaggle-train": "train", "kaggle-test": "test"}.get(kind, f"{kind}-{key}")
        return data_root / ".pcam-cache" / name
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pcamlib"
    return root / f"{split}-{key}"


def _bad_items_error(problems: list[Problem], name: str) -> DataError:
    """``name: N bad item(s)``, one indented line for each of the first 50, and what to do."""
    listed = " (all in DataError.problems)" if len(problems) > 50 else ""
    lines = few(problems, 50, fmt=lambda p: f"{p.id} ({p.where}): {p.reason}", sep="\n  ")
    hint = "pass on_error='exclude' to leave them out (listed in excluded.csv)"
    return DataError(f"{name}: {len(problems)} bad item(s){listed}\n  {lines}\n({hint})", problems)


def _reuse(out: Path, fingerprint: str, on_error: str, source_name: str) -> PackedCache | None:
    """The finished cache at ``out`` if it is of this source and sound, else None (cleared)."""
    try:
        cache = PackedCache.open(out)
    except DataError as exc:
        warnings.warn(f"{exc}; packing it again", stacklevel=3)
        cache = None
    if cache is not None and cache.meta["fingerprint"] == fingerprint:
        if cache.meta["excluded"] and on_error == "raise":
            raise _bad_items_error(cache.excluded, source_name)
        return cache
    for name in ("meta.json", "images.npy", "index.csv", "excluded.csv"):  # meta.json first
        (out / name).unlink(missing_ok=True)
    return None


def pack(
    source: PatchSource | str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "train",
    on_error: str = "raise",
    workers: int | None = None,
    progress: bool = True,
) -> PackedCache:
    """Decode ``source`` into a cache at ``out`` (reused while the source is unchanged; a killed
    pack resumes at its last chunk). ``on_error='raise'`` stops with every bad item named
    (``DataError.problems``); ``'exclude'`` leaves them out, listed in ``excluded.csv``."""
    if on_error not in ("raise", "exclude"):
        raise ValueError(f"on_error must be 'raise' or 'exclude', got {on_error!r}")
    source = source if isinstance(source, PatchSource) else open_source(source, split)
    (out := Path(out)).mkdir(parents=True, exist_ok=True)
    fingerprint = source.fingerprint()
    if (out / "meta.json").is_file() and (cache := _reuse(out, fingerprint, on_error, source.name)):
        return cache
    if len(source) == 0:
        if source.problems:
            raise _bad_items_error(source.problems, f"{source.name} (nothing left to pack)")
        raise DataError(f"{source.name}: no images to pack")
    if source.problems and progress:
        listed = f"{len(source.problems)} bad item(s) in the listing; checking every image too"
        tqdm.write(listed, file=sys.stderr)
    key, start = f"{FORMAT_VERSION}:{fingerprint}:{len(source)}:{CHUNK}", time.perf_counter()
    state, images, content = _start(out / ".partial", key, len(source))
    shown = dict(total=len(source), initial=len(content), unit="img", desc=f"packing {out.name}")
    with tqdm(**shown, disable=not progress) as bar:
        resumed = _decode_chunks(source, out / ".partial", state, images, content, workers, bar)
    rate = (len(source) - resumed) / max(time.perf_counter() - start, 1e-9)
    decoded = [Problem(source.ids[i], source.where(i), why) for i, why in state["bad"]]
    problems = source.problems + decoded
    if problems and on_error == "raise":  # .partial stays: 'exclude' then needs no decoding
        raise _bad_items_error(problems, source.name)
    _finalise(source, out, fingerprint, problems, content)
    cache = PackedCache.open(out, verify="none")
    if progress:
        _report(cache, rate, resumed, problems)
    return cache


def _start(work: Path, key: str, n: int) -> tuple[dict, np.memmap, list[str]]:
    """(state, writable array, content hashes of its sound chunks) of an interrupted pack with
    this ``key``, else of a fresh one. A resume re-hashes: it never trusts writes that were lost."""
    try:
        state = json.loads((work / "state.json").read_text())
        images = np.load(work / "images.npy", mmap_mode="r+")
    except (OSError, ValueError):
        state = {}
    if state.get("key") != key:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        images = np.lib.format.open_memmap(work / "images.npy", "w+", np.uint8, (n, *PATCH_SHAPE))
        state = {"key": key, "digests": [], "bad": []}
    content = []
    for c, digest in enumerate(state["digests"]):
        hashes = [*map(content_hash, images[c * CHUNK : (c + 1) * CHUNK])]
        if _digest(hashes) != digest:
            del state["digests"][c:]
            break
        content += hashes
    state["bad"] = [b for b in state["bad"] if b[0] < len(content)]
    return state, images, content


def _decode_slice(source, block: np.ndarray, hashes: list, lo: int, span: range) -> list:
    """Decode rows ``span`` into ``block`` (row ``lo`` first); bad ones become zeros, named."""
    bad = []
    for i in span:
        try:
            block[i - lo] = source.read(i)
        except DataError as exc:
            block[i - lo] = 0
            bad.append((i, str(exc).removeprefix(f"{source.where(i)}: ")))
        hashes[i - lo] = content_hash(block[i - lo])  # while its pixels are in the CPU cache
    return bad


def _decode_chunks(source, work, state, images, content: list, workers, bar) -> int:
    """Decode the chunks after ``content`` into ``images``, each then recorded in ``state.json``
    and its hashes added to ``content``; returns how many rows were done already."""
    n, resumed, workers = len(source), len(content), workers or min(8, 2 * (os.cpu_count() or 1))
    block = np.zeros((min(CHUNK, n), *PATCH_SHAPE), np.uint8)  # decoded in RAM: no page faults
    with ThreadPoolExecutor(workers) as pool, open(work / "images.npy", "r+b") as f:
        for lo in range(resumed, n, CHUNK):
            hi = min(lo + CHUNK, n)
            hashes, bad = [""] * (hi - lo), []
            if source.block_reads:
                block[: hi - lo] = source.read_many(lo, hi)
                hashes = list(pool.map(content_hash, block[: hi - lo]))
            else:
                step = -(-(hi - lo) // workers)  # one slice per worker
                spans = [range(a, min(a + step, hi)) for a in range(lo, hi, step)]
                for part in pool.map(partial(_decode_slice, source, block, hashes, lo), spans):
                    bad += part
            # pwrite, not memmap assignment: no page faults; data first, then the state
            os.pwrite(f.fileno(), block[: hi - lo].data, images.offset + lo * block[0].nbytes)
            content += hashes
            state["digests"].append(_digest(hashes))
            state["bad"] += bad
            atomic_write_text(work / "state.json", json.dumps(state))
            bar.update(hi - lo)
            if state["bad"]:
                bar.set_postfix(bad=len(state["bad"]), refresh=False)
        os.fsync(f.fileno())  # a finished cache is on disk before its meta.json says so
    return resumed


def _finalise(source, out: Path, fingerprint: str, problems: list[Problem], content) -> None:
    """Write index + meta, then move the array into place; meta.json last marks completion."""
    work, array = out / ".partial", out / ".partial" / "images.npy"
    keep = np.flatnonzero(~np.isin(source.ids, [p.id for p in problems]))
    if len(keep) == 0:
        raise _bad_items_error(problems, f"{source.name} (nothing left to pack)")
    if len(keep) < len(source):  # the good rows into a new array (the full one stays until done)
        kept = np.lib.format.open_memmap(
            work / "kept.npy", "w+", np.uint8, (len(keep), *PATCH_SHAPE)
        )
        np.take(np.load(array, mmap_mode="r"), keep, axis=0, out=kept, mode="clip")  # no RAM copy
        kept.flush()
        del kept  # closed before the move
        array = work / "kept.npy"
    index = pd.DataFrame({"id": source.ids, "label": source.labels, "group": source.groups})
    index = index.fillna({"label": -1}).dropna(axis=1).assign(content=content)  # no group: none
    atomic_write_text(out / "index.csv", index.iloc[keep].to_csv(index=False))
    frame = pd.DataFrame([vars(p) for p in problems], columns=["id", "where", "reason"])
    atomic_write_text(out / "excluded.csv", frame.to_csv(index=False))
    os.replace(array, out / "images.npy")
    meta = dict(format=FORMAT_VERSION, source=source.name, fingerprint=fingerprint)
    meta.update(count=len(keep), content_digest=_digest([content[k] for k in keep]))
    meta.update(excluded=len(problems), created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1))
    shutil.rmtree(work, ignore_errors=True)


def _report(cache: PackedCache, rate: float, resumed: int, problems: list[Problem]) -> None:
    pos = int((cache.labels == 1).sum()) if cache.labels is not None else 0
    classes = f" ({pos} tumour, {len(cache) - pos} normal)" if cache.labels is not None else ""
    extra = f"; excluded {len(problems)}, listed in excluded.csv" if problems else ""
    size, again = f"{cache.images.nbytes / 2**20:,.0f} MiB", " after resuming" if resumed else ""
    text = f"packed {len(cache)} patches{classes} into {cache.path} ({size}) at {rate:,.0f} img/s"
    tqdm.write(text + again + extra, file=sys.stderr)  # stdout stays clean for the CLI's JSON


def load_patches(
    data: str | os.PathLike | PatchSource,
    split: str = "train",
    *,
    cache_dir: str | os.PathLike | None = None,
    on_error: str = "raise",
    groups_csv: str | os.PathLike | None = None,
    progress: bool = True,
) -> PackedCache:
    """The one call: a data path (any layout) or a cache dir → a cache, packed on first use into
    ``cache_dir`` (default :func:`default_cache_dir`), reused while the data is unchanged."""
    source, root = data, None
    if not isinstance(data, PatchSource):
        if (Path(data) / "meta.json").is_file():
            return PackedCache.open(data)
        source, root = open_source(data, split, groups_csv), Path(data)
    out = Path(cache_dir) if cache_dir else default_cache_dir(source, split, root)
    return pack(source, out, split=split, on_error=on_error, progress=progress)
