"""Pack once, stream many epochs: a verified uint8 memmap cache of decoded patches.

Decoding TIFF/JPEG runs at a few thousand images/s; a memmap reads at 50k+. ``pack`` decodes
every item once, in threads, chunk by chunk, recording progress so that a killed run resumes
at its last chunk, and finishes atomically. A cache directory holds ``images.npy`` ((N, 96,
96, 3) uint8, readable with ``np.load(mmap_mode="r")``), ``index.csv`` (id, label or -1,
group, content), ``excluded.csv`` (items left out with on_error="exclude") and ``meta.json``
(source fingerprint, count, a checksum per chunk; written last, so no meta.json means no
cache). Work in progress lives in ``.partial/`` (images.npy + state.json).

``content`` is each patch's identity by pixels (:func:`content_hash`): file names repeat across
datasets (PCam's class-folder exports all hold ``0/patch0000081.jpg``), pixels do not. Caches
packed before it existed (format 2) gain it in place on their next use, from images.npy alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .io import atomic_write_text
from .sources import PATCH_SHAPE, DataError, PatchSource, Problem, format_problems, open_source

__all__ = ["PackedCache", "content_hash", "default_cache_dir", "load_patches", "pack"]

CHUNK = 1024  # images per resume point and per checksum
FORMAT_VERSION = 3  # 3: index.csv has content hashes
UPGRADABLE = 2  # the format before content hashes: upgraded in place, never used as is
HASH = r"[0-9a-f]{16}"  # what content_hash returns (index.csv and split.csv check it)


def content_hash(image: np.ndarray) -> str:
    """A patch's identity by its decoded pixels: 16 hex digits of SHA-1 over the uint8 bytes.

    SHA-1 because CPUs hash it in hardware (~20 µs a patch, a fraction of a decode), and
    because Kaggle named each of its patches by the SHA-1 of these bytes: there the hash is
    the id's first 16 digits. 64 bits make a collision among a million patches a 3-in-10⁸
    chance.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha1(image.data).hexdigest()[:16]


def _hashes(images: np.ndarray, lo: int = 0, hi: int | None = None) -> list[str]:
    return [content_hash(image) for image in images[lo:hi]]


def _digest(hashes: list[str]) -> str:
    """A chunk's checksum: CRC32 of its rows' content hashes (one pass over the pixels, not two)."""
    return f"{zlib.crc32(''.join(hashes).encode()):08x}"


def _crc32(block: np.ndarray) -> str:
    """The checksum of format 2 (CRC32 of the pixels), checked once when upgrading."""
    return f"{zlib.crc32(np.ascontiguousarray(block).data):08x}"


def _bad_chunk(images: np.ndarray, digests: list[str], chunk: int, chunks=None) -> int | None:
    """The first of ``chunks`` (default: all) whose checksum differs from ``digests``, or None."""
    chunks = range(len(digests)) if chunks is None else chunks
    return next(
        (c for c in chunks if _digest(_hashes(images, c * chunk, (c + 1) * chunk)) != digests[c]),
        None,
    )


def _bad_items_error(problems: list[Problem], name: str) -> DataError:
    hint = "pass on_error='exclude' to leave them out (listed in excluded.csv)"
    return DataError(f"{format_problems(problems, name)}\n({hint})", problems)


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
    def excluded(self) -> list[Problem]:
        """Items left out when packing with on_error='exclude'."""
        path = self.path / "excluded.csv"
        if not path.is_file():
            return []
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        return [Problem(*row) for row in frame[["id", "where", "reason"]].itertuples(index=False)]

    @classmethod
    def open(cls, path: str | os.PathLike, verify: str = "quick") -> PackedCache:
        """Open and check a cache. ``verify``: 'full' checksums every chunk, 'quick' 8, 'none'."""
        if verify not in ("quick", "full", "none"):
            raise ValueError(f"verify must be 'quick', 'full' or 'none', got {verify!r}")
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{path}: not a finished pcamlib cache (no meta.json)")
        try:
            meta = json.loads(meta_path.read_text())
            count, chunk, digests = meta["count"], meta["chunk"], meta["chunk_digests"]
        except (ValueError, KeyError) as exc:
            raise DataError(f"{meta_path}: unreadable ({type(exc).__name__}: {exc})") from None
        if meta.get("format") == UPGRADABLE:
            raise DataError(
                f"{path}: cache format {UPGRADABLE} has no content hashes; load_patches() or "
                "pack() adds them in place"
            )
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"{path}: cache format {meta.get('format')}, expected {FORMAT_VERSION}")
        try:
            images = np.load(path / "images.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{path}/images.npy: unreadable ({exc}); delete it and re-pack"
            ) from None
        expected = (count, *PATCH_SHAPE)
        if images.shape != expected or images.dtype != np.uint8:
            raise DataError(
                f"{path}/images.npy: {images.shape} {images.dtype}, meta.json says {expected} uint8"
            )
        if len(digests) != -(-count // chunk):
            raise DataError(f"{meta_path}: {len(digests)} checksums for {count} images")
        index = _read_index(path, count, digests, chunk)
        _verify_chunks(path, images, digests, chunk, verify)
        labels = index["label"].astype(np.int8).to_numpy()
        groups = None
        if "group" in index and (index["group"] != "").all():
            groups = index["group"].to_numpy()
        labels = None if (labels < 0).all() else labels
        ids, content = index["id"].tolist(), index["content"].tolist()
        return cls(path, images, ids, content, labels, groups, meta)


def first_bad_hash(hashes: pd.Series) -> int | None:
    """Position of the first value that is not a content hash (:data:`HASH`), else None."""
    bad = ~hashes.str.fullmatch(HASH).fillna(False).astype(bool)
    return int(np.argmax(bad)) if bad.any() else None


def _read_index(path: Path, count: int, digests: list[str], chunk: int) -> pd.DataFrame:
    """index.csv, checked: ``count`` rows whose content hashes make meta.json's checksums."""
    index = pd.read_csv(path / "index.csv", dtype=str, keep_default_na=False)
    if len(index) != count:
        raise DataError(f"{path}/index.csv: {len(index)} rows, meta.json says {count}")
    if "content" not in index:
        raise DataError(f"{path}/index.csv: no content column; delete the cache and pack again")
    i = first_bad_hash(index["content"])
    if i is not None:
        raise DataError(
            f"{path}/index.csv: row {i + 2} has content {index['content'].iloc[i]!r}, "
            "expected 16 hex digits; delete the cache and pack again"
        )
    content = index["content"].tolist()
    c = next(
        (c for c, d in enumerate(digests) if _digest(content[c * chunk : (c + 1) * chunk]) != d),
        None,
    )
    if c is not None:  # cheap: no pixel is read
        raise DataError(
            f"{path}/index.csv: the content hashes of chunk {c} do not match meta.json; "
            "delete the cache and pack again"
        )
    return index


def _upgrade(path: Path) -> None:
    """Give a format-2 cache its content hashes in place: one checked read of images.npy.

    Each chunk is checked against its old CRC32 before its pixels are hashed; index.csv is
    rewritten first, meta.json (new checksums, format 3) last, so a killed upgrade is redone.
    """
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != UPGRADABLE:
            return
        images = np.load(path / "images.npy", mmap_mode="r")
        index = pd.read_csv(path / "index.csv", dtype=str, keep_default_na=False)
        chunk, crcs = meta["chunk"], meta["chunk_digests"]
    except (OSError, ValueError, KeyError, AttributeError):
        return  # PackedCache.open names the problem
    if len(index) != len(images) or len(crcs) != -(-len(images) // chunk):
        return  # likewise
    content, digests = [], []
    for c, crc in enumerate(crcs):
        block = images[c * chunk : (c + 1) * chunk]
        if _crc32(block) != crc:
            raise _corrupt(path, c, chunk, len(images))
        content += (hashes := _hashes(block))
        digests.append(_digest(hashes))
    index["content"] = content
    meta.update(format=FORMAT_VERSION, chunk_digests=digests)
    try:
        atomic_write_text(path / "index.csv", index.to_csv(index=False))
        atomic_write_text(meta_path, json.dumps(meta, indent=1), durable=True)
    except OSError as exc:
        raise DataError(
            f"{path}: a format-{UPGRADABLE} cache without content hashes, and adding them "
            f"failed ({exc.strerror}); pack it again somewhere writable (cache_dir)"
        ) from None


def _corrupt(path: Path, c: int, chunk: int, n: int) -> DataError:
    lo, hi = c * chunk, min((c + 1) * chunk, n)
    return DataError(
        f"{path}/images.npy: checksum mismatch in chunk {c} (images {lo}–{hi - 1}); "
        "the cache is corrupt: delete it and pack again"
    )


def _verify_chunks(path: Path, images, digests: list[str], chunk: int, verify: str) -> None:
    if verify == "none":
        return
    chunks = range(len(digests))
    if verify == "quick" and len(digests) > 8:
        rng = np.random.default_rng()  # a different sample each open
        chunks = sorted({0, len(digests) - 1, *rng.choice(len(digests), 6, replace=False)})
    c = _bad_chunk(images, digests, chunk, chunks)
    if c is not None:
        raise _corrupt(path, c, chunk, len(images))


def default_cache_dir(source: PatchSource, split: str, data_root: Path | None) -> Path:
    """``PCAM_CACHE_DIR`` if set; else next to the data when writable; else a per-user dir."""
    key = hashlib.blake2b(source.name.encode(), digest_size=6).hexdigest()
    configured = os.environ.get("PCAM_CACHE_DIR")
    if configured:
        return Path(configured) / f"{split}-{key}"
    if data_root is not None and data_root.is_dir() and os.access(data_root, os.W_OK):
        # One cache per source, whatever split name asked for it (Kaggle train = "valid" too).
        kind = source.name.split(":", 1)[0]
        named = {"kaggle-train": "train", "kaggle-test": "test"}
        return data_root / ".pcam-cache" / named.get(kind, f"{kind}-{key}")
    user_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return user_cache / "pcamlib" / f"{split}-{key}"


@contextlib.contextmanager
def _locked(out: Path):
    """One packer per cache directory at a time (a second process waits, then reuses)."""
    import fcntl  # POSIX only, like the os.pwrite that packing relies on

    try:
        f = open(out / ".lock", "a")
    except OSError:  # a read-only cache can still be reused; packing into it fails clearly
        yield
        return
    with f:  # closing the file releases the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            tqdm.write(f"waiting for another process that is packing {out} …", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def pack(
    source: PatchSource | str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "train",
    on_error: str = "raise",
    workers: int | None = None,
    progress: bool = True,
) -> PackedCache:
    """Decode ``source`` into a cache at ``out``, or reuse the one there if the source is unchanged.

    An interrupted pack of the same source resumes at its last finished chunk.
    ``on_error='raise'`` (default) stops with every offending item named (``DataError.problems``);
    ``'exclude'`` leaves them out and lists them in ``excluded.csv``. Nothing is dropped silently.
    """
    if on_error not in ("raise", "exclude"):
        raise ValueError(f"on_error must be 'raise' or 'exclude', got {on_error!r}")
    if not isinstance(source, PatchSource):
        source = open_source(source, split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        fingerprint = source.fingerprint()
        if (out / "meta.json").is_file():
            cache = None
            try:
                if _fingerprint_of(out) in (fingerprint, None):  # else: another source
                    _upgrade(out)  # cheaper than decoding the same pixels again
                    cache = PackedCache.open(out, verify="quick")
            except DataError as exc:
                warnings.warn(f"{exc}; packing it again", stacklevel=2)
            if cache is not None:
                if cache.meta["excluded"] and on_error == "raise":
                    raise _bad_items_error(cache.excluded, source.name)
                return cache
            # meta.json first: from here on `out` is no longer a cache
            for name in ("meta.json", "images.npy", "index.csv", "excluded.csv"):
                (out / name).unlink(missing_ok=True)
        workers = workers or min(8, 2 * (os.cpu_count() or 1))
        return _pack(source, out, fingerprint, on_error, workers, progress)


def _fingerprint_of(out: Path) -> str | None:
    """The source fingerprint a cache's meta.json records, if it is readable."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads((out / "meta.json").read_text()).get("fingerprint")
    return None


def _start(work: Path, fingerprint: str, n: int) -> tuple[dict, int]:
    """(state, data offset) of an interrupted pack of the same source, else of a fresh one.

    Chunks recorded as done are checksummed again, so a resume never trusts lost writes.
    """
    try:
        state = json.loads((work / "state.json").read_text())
        images = np.load(work / "images.npy", mmap_mode="r")
    except (OSError, ValueError):
        state = {}
    same = (state.get("format"), state.get("fingerprint"), state.get("count"))
    if same == (FORMAT_VERSION, fingerprint, n) and images.shape == (n, *PATCH_SHAPE):
        digests = state["digests"][: state["done_chunks"]]
        bad = _bad_chunk(images, digests, state["chunk"])
        done = len(digests) if bad is None else bad
        state.update(done_chunks=done, digests=digests[:done])
        state["bad"] = [b for b in state["bad"] if b[0] < done * state["chunk"]]
        return state, images.offset
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    images = np.lib.format.open_memmap(work / "images.npy", "w+", np.uint8, (n, *PATCH_SHAPE))
    state = dict(format=FORMAT_VERSION, fingerprint=fingerprint, count=n, chunk=CHUNK)
    state.update(done_chunks=0, digests=[], bad=[])
    atomic_write_text(work / "state.json", json.dumps(state))
    return state, images.offset


def _decode_chunks(
    source: PatchSource, work: Path, state: dict, offset: int, workers: int, bar: tqdm
) -> list[str]:
    """Decode the chunks not done yet into ``work/images.npy``, recording each in the state.

    Returns every row's content hash: those of a resumed pack's finished chunks are read back
    from the array (checked by ``_start``), not kept in state.json, which is rewritten per chunk.
    """
    n, chunk = len(source), state["chunk"]
    # Decode into two reused RAM buffers (no page faults) and write each chunk with one pwrite.
    buffers = [np.zeros((min(chunk, n), *PATCH_SHAPE), np.uint8) for _ in range(2)]
    done = state["done_chunks"] * chunk
    content = _hashes(np.load(work / "images.npy", mmap_mode="r"), 0, done) if done else []

    def decode(block: np.ndarray, hashes: list, lo: int, start: int, stop: int) -> list:
        bad = []
        for i in range(start, stop):
            try:
                block[i - lo] = source.read(i)
            except DataError as exc:
                block[i - lo] = 0
                bad.append((i, str(exc).removeprefix(f"{source.where(i)}: ")))
            hashes[i - lo] = content_hash(block[i - lo])  # while its pixels are in the CPU cache
        return bad

    def commit(fd: int, c: int, block: np.ndarray, bad: list, hashes: list) -> None:
        # In chunk order, on one thread, while the next chunk decodes: data first, then state.
        os.pwrite(fd, block.data, offset + c * chunk * block[0].nbytes)
        content.extend(hashes)
        state["digests"].append(_digest(hashes))
        state["bad"] += bad
        state["done_chunks"] = c + 1
        atomic_write_text(work / "state.json", json.dumps(state))

    with (
        open(work / "images.npy", "r+b") as f,
        ThreadPoolExecutor(workers) as pool,
        ThreadPoolExecutor(1) as committer,
    ):
        pending, n_bad = None, len(state["bad"])
        for c in range(state["done_chunks"], -(-n // chunk)):
            lo, hi = c * chunk, min((c + 1) * chunk, n)
            block = buffers[c % 2][: hi - lo]  # its previous commit finished (see below)
            if source.block_reads:
                block[:], bad = source.read_many(lo, hi), []
                hashes = _hashes(block)
            else:
                hashes = [""] * (hi - lo)
                starts = range(lo, hi, -(-(hi - lo) // workers))  # one slice per worker
                parts = pool.map(partial(decode, block, hashes, lo), starts, [*starts[1:], hi])
                bad = [b for part in parts for b in part]
            if pending is not None:
                pending.result()
            pending = committer.submit(commit, f.fileno(), c, block, bad, hashes)
            bar.update(hi - lo)
            n_bad += len(bad)
            if n_bad:
                bar.set_postfix(bad=n_bad, refresh=False)
        if pending is not None:
            pending.result()
        os.fsync(f.fileno())  # a finished cache is on disk before its meta.json says so
    return content


def _pack(
    source: PatchSource, out: Path, fingerprint: str, on_error: str, workers: int, progress: bool
) -> PackedCache:
    n = len(source)
    if n == 0:
        if source.problems:
            raise _bad_items_error(source.problems, f"{source.name} (nothing left to pack)")
        raise DataError(f"{source.name}: no images to pack")
    if source.problems and progress:
        tqdm.write(
            f"{len(source.problems)} bad item(s) in the listing; checking every image too",
            file=sys.stderr,
        )
    state, offset = _start(out / ".partial", fingerprint, n)
    resumed = state["done_chunks"] * state["chunk"]
    start_time = time.perf_counter()
    desc = f"packing {out.name}"
    with tqdm(total=n, initial=resumed, unit="img", desc=desc, disable=not progress) as bar:
        content = _decode_chunks(source, out / ".partial", state, offset, workers, bar)
    rate = (n - resumed) / max(time.perf_counter() - start_time, 1e-9)

    decoded = [Problem(source.ids[i], source.where(i), why) for i, why in state["bad"]]
    problems = source.problems + decoded
    if problems and on_error == "raise":
        # .partial stays: a rerun with on_error='exclude' finishes without decoding again.
        raise _bad_items_error(problems, source.name)
    _finalise(source, out, state, problems, content)
    cache = PackedCache.open(out, verify="none")
    if progress:
        pos = int((cache.labels == 1).sum()) if cache.labels is not None else None
        classes = f" ({pos} tumour, {len(cache) - pos} normal)" if pos is not None else ""
        extra = f"; excluded {len(problems)}, listed in excluded.csv" if problems else ""
        tqdm.write(
            f"packed {len(cache)} patches{classes} into {out} "
            f"({cache.images.nbytes / 2**20:,.0f} MiB) at {rate:,.0f} img/s"
            f"{' after resuming' if resumed else ''}{extra}",
            file=sys.stderr,  # progress: stdout stays clean for the CLI's JSON
        )
    return cache


def _finalise(
    source: PatchSource, out: Path, state: dict, problems: list[Problem], content: list[str]
) -> None:
    """Write index + meta, then move the array into place; meta.json last marks completion."""
    n, chunk, work = len(source), state["chunk"], out / ".partial"
    row_of = {item_id: i for i, item_id in enumerate(source.ids)}
    drop = {i for i, _ in state["bad"]} | {row_of[p.id] for p in source.problems if p.id in row_of}
    keep = np.setdiff1d(np.arange(n), np.asarray(sorted(drop), dtype=np.int64))
    if len(keep) == 0:
        raise _bad_items_error(problems, f"{source.name} (nothing left to pack)")
    array, digests = work / "images.npy", state["digests"]
    if drop:  # copy the good rows into a compact array (the full one stays for a rerun)
        full = np.load(array, mmap_mode="r")
        array, digests = work / "compact.npy", []
        compact = np.lib.format.open_memmap(array, "w+", np.uint8, (len(keep), *PATCH_SHAPE))
        for lo in range(0, len(keep), chunk):
            compact[lo : lo + chunk] = full[keep[lo : lo + chunk]]
            digests.append(_digest([content[k] for k in keep[lo : lo + chunk]]))
        compact.flush()
        del full, compact
    labels = source.labels if source.labels is not None else np.full(n, -1, np.int8)
    index = pd.DataFrame({"id": source.ids, "label": labels})
    if source.groups is not None:
        index["group"] = source.groups
    index["content"] = content
    atomic_write_text(out / "index.csv", index.iloc[keep].to_csv(index=False))
    if problems:
        frame = pd.DataFrame([vars(p) for p in problems], columns=["id", "where", "reason"])
        atomic_write_text(out / "excluded.csv", frame.to_csv(index=False))
    else:
        (out / "excluded.csv").unlink(missing_ok=True)
    os.replace(array, out / "images.npy")
    meta = {
        "format": FORMAT_VERSION,
        "source": source.name,
        "fingerprint": state["fingerprint"],
        "count": int(len(keep)),
        "shape": list(PATCH_SHAPE),
        "dtype": "uint8",
        "chunk": chunk,
        "chunk_digests": digests,
        "excluded": len(problems),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1), durable=True)
    shutil.rmtree(work, ignore_errors=True)


def load_patches(
    data: str | os.PathLike | PatchSource,
    split: str = "train",
    *,
    cache_dir: str | os.PathLike | None = None,
    on_error: str = "raise",
    groups_csv: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> PackedCache:
    """The one call: a data path (any supported layout) or a cache dir → a cache.

    Packs on first use (into ``cache_dir``, default: see :func:`default_cache_dir`) and reuses
    the cache while the source is unchanged.
    """
    source, root = data, None
    if not isinstance(data, PatchSource):
        if (Path(data) / "meta.json").is_file():
            with _locked(Path(data)):
                _upgrade(Path(data))
            return PackedCache.open(data)
        source, root = open_source(data, split, groups_csv), Path(data)
    out = Path(cache_dir) if cache_dir else default_cache_dir(source, split, root)
    return pack(source, out, split=split, on_error=on_error, workers=workers, progress=progress)
