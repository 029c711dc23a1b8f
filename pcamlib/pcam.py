"""PCam's HDF5 release (Zenodo 2546921, CC0): its layout read as a ``PatchSource``, and its
download. Files resume (Range requests) in ``OUT.download/`` on the next call, are verified and
unpacked into ``OUT.partial/``, renamed ``OUT`` when whole."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import re
import shutil
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm  # text bars: tqdm.auto warns in kernels without ipywidgets

from .cache import atomic_path
from .config import resolve_out
from .sources import PATCH_SHAPE, SPLITS, DataError, PatchSource, Problem, not01, read_h5

H5_PATTERN = "camelyonpatch_level_2_split_{split}_{xy}.h5"
PCAM_SPLITS = "pcam-splits"  # the name (before ':') of the source of PCam's three splits
ZENODO_URL = "https://zenodo.org/records/2546921/files/{name}?download=1"
SUMS = "SHA256SUMS"
CHUNK = 1 << 20
USER_AGENT = "pcamlib (+https://github.com/pcamlib/pcamlib)"
TIMEOUT_S = 60  # per read: a stalled connection is a network error; the next call resumes
NETWORK_ERRORS = (urllib.error.URLError, OSError, HTTPException)

# Zenodo's files, small first so that a wrong URL or checksum shows before gigabytes are fetched:
# the .h5.gz as TensorFlow Datasets pins them (patch_camelyon/checksums.tsv), the meta csvs by
# MD5 under Zenodo's names (basveeling/pcam's README swaps valid and test).
_PINNED = [  # file, size (None: not published), MD5 or SHA-256
    ("train_meta", None, "5a3dd671e465cfd74b5b822125e65b0a"),
    ("valid_meta", None, "67589e00a4a37ec317f2d1932c7502ca"),
    ("test_meta", None, "3455fd69135b66734e1008f3af684566"),
    ("train_y", 21378, "b74126d2c01b20d3661f9b46765d29cf4e4fba6faba29c8e0d09d406331ab75a"),
    ("valid_y", 3038, "ce1ae30f08feb468447971cfd0472e7becd0ad96d877c64120c72571439ae48c"),
    ("test_y", 3040, "0a522005fccc8bbd04c5a117bfaf81d8da2676f03a29d7499f71d0a0bd6068ef"),
    ("valid_x", 805965320, "f82ee1670d027b4ec388048d9eabc2186b77c009655dae76d624c0ecb053ccb2"),
    ("test_x", 800875929, "79174c2201ad521602a5888be8f36ee10875f37403dd3f2086caf2182ef87245"),
    ("train_x", 6421353462, "d619e741468a7ab35c7e4a75e6821b7e7e6c9411705d45708f2a0efc8960656c"),
]
ZENODO_FILES = {  # name: (size or None, digest: 32 hex digits an MD5, 64 a SHA-256)
    f"camelyonpatch_level_2_split_{file}{'.csv' if size is None else '.h5.gz'}": (size, digest)
    for file, size, digest in _PINNED
}
PCAM_META, PCAM_HDF5 = ([n for n in ZENODO_FILES if n.endswith(end)] for end in (".csv", ".gz"))


class _Interrupted(Exception):
    """The connection failed part-way: the bytes so far are kept for the next call to resume."""


def _open(url: str, name: str, start: int = 0):
    """The response for ``url`` from byte ``start``, or None when nothing is left to fetch."""
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={start}-"} if start else {})}
    try:
        request = urllib.request.Request(url, headers=headers)
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the range starts at the end: the file is complete
            return contextlib.nullcontext()
        if exc.code < 500:
            raise DataError(f"{name}: HTTP {exc.code} {exc.reason} from {url}") from None
        raise _Interrupted(f"HTTP {exc.code} {exc.reason}") from None
    except NETWORK_ERRORS as exc:
        raise _Interrupted(str(getattr(exc, "reason", None) or exc) or type(exc).__name__) from None


def _mirror(url: str) -> dict[str, tuple[None, str]]:
    """PCam's files under ``url`` by its ``SHA256SUMS`` (every HDF5 file needs a line)."""
    try:
        with _open(f"{url}/{SUMS}", SUMS) as response:
            text = response.read().decode("utf-8", "replace")
    except (_Interrupted, *NETWORK_ERRORS) as exc:
        raise DataError(f"{SUMS}: cannot fetch {url}/{SUMS} ({exc})") from None
    listed = {}
    for number, line in enumerate(text.splitlines(), 1):
        if match := re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.strip()):
            listed[Path(match[2]).name] = match[1].lower()
        elif line.strip():
            raise DataError(f"{url}/{SUMS}:{number}: not a sha256sum line: {line[:80]!r}")
    if missing := [name for name in PCAM_HDF5 if name not in listed]:
        raise DataError(f"{url}/{SUMS}: no checksum for {', '.join(missing)}")
    return {n: (None, listed[n]) for n in PCAM_META + PCAM_HDF5 if n in listed}


@contextlib.contextmanager
def _writing(path: Path):
    """Writes to ``path``; a failed one (a full disk above all) is one line naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:  # not the system refusing a write (e.g. a bad gzip stream)
            raise
        what = "disk full" if exc.errno == errno.ENOSPC else f"cannot write: {exc.strerror}"
        free = shutil.disk_usage(path.parent).free / 2**20
        raise DataError(f"{path}: {what} ({free:,.0f} MiB free); rerun to resume") from None


def _read(response) -> bytes:
    try:
        return response.read(CHUNK)
    except (OSError, HTTPException) as exc:
        raise _Interrupted(str(exc) or type(exc).__name__) from None


def _fetch(url: str, name: str, part: Path, size: int | None) -> None:
    """Append the rest of ``url`` to ``part`` (a Range request from its size)."""
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start >= size:
        return  # complete (or too long, which the size check names)
    try:
        with _open(url, name, start) as response:
            if response is None:
                return
            if response.status != 206:  # the server ignored the Range: start over
                start = 0
            length = response.headers.get("Content-Length")  # of the range: the rest
            total = None if length is None else start + int(length)
            if None not in (size, total) and total != size:
                serves = f"serves {total:,} bytes, but the release publishes {size:,}"
                raise DataError(f"{name}: {url} {serves}")
            with _writing(part), open(part, "ab" if start else "wb") as raw:
                with tqdm.wrapattr(raw, "write", total=total, initial=start, desc=name) as f:
                    while chunk := _read(response):
                        f.write(chunk)
        if total is not None and part.stat().st_size < total:
            raise _Interrupted(f"the connection closed before byte {total:,}")
    except _Interrupted as exc:
        have = f"{part.stat().st_size if part.exists() else 0:,} bytes ({exc})"
        raise DataError(f"{name}: network error after {have}; rerun to resume") from None


def _verify(src: Path, name: str, want: str, origin: str) -> None:
    """Refuse (and remove, to fetch it again) ``src`` unless of the published checksum."""
    digest = hashlib.new("md5" if len(want) == 32 else "sha256")
    bar = dict(total=src.stat().st_size, desc=f"verifying {name}")
    with open(src, "rb") as raw, tqdm.wrapattr(raw, "read", **bar) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    if (got := digest.hexdigest()) != want:
        src.unlink()
        mismatch = f"{digest.name.upper()} checksum mismatch (got {got}, {origin} say {want})"
        raise DataError(f"{name}: {mismatch}; the download was removed, rerun to fetch it again")


def _unpack(src: Path, name: str, final: Path) -> None:
    """Gunzip ``src`` to ``final`` through a temporary file (``final`` appears only whole)."""
    bar = dict(total=src.stat().st_size, desc=f"unpacking {name}")
    try:
        with open(src, "rb") as raw, tqdm.wrapattr(raw, "read", **bar) as f:
            with atomic_path(final) as tmp, _writing(tmp), open(tmp, "wb") as out:
                shutil.copyfileobj(gzip.GzipFile(fileobj=f), out, CHUNK)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: not a readable gzip file ({exc})") from None
    src.unlink()  # the unpacked copy is verified: keep the disk for the next file


def download_pcam(
    out: str | os.PathLike = "data/pcam", *, mirror: str | None = None, force: bool = False
) -> Path:
    """PCam in ``out`` in the PCam HDF5 layout (no credentials): from Zenodo, checked against the
    sizes and checksums built in above, or from ``mirror``, checked against its SHA256SUMS."""
    out = resolve_out(out)
    if not force and all((out / n.removesuffix(".gz")).is_file() for n in PCAM_HDF5):
        return out
    base = mirror and mirror.rstrip("/")
    files = _mirror(base) if base else ZENODO_FILES
    origin = f"{base}/{SUMS}" if base else "pcamlib's built-in checksums (TFDS, Zenodo)"
    work, partial = out.with_name(out.name + ".download"), out.with_name(out.name + ".partial")
    for folder in (work, partial):
        folder.mkdir(parents=True, exist_ok=True)
    for name, (size, digest) in files.items():
        final, part = partial / name.removesuffix(".gz"), work / f"{name}.part"
        if final.is_file():  # verified and unpacked by an earlier call
            continue
        url = f"{base}/{name}" if base else ZENODO_URL.format(name=name)
        _fetch(url, name, part, size)
        _verify(part, name, digest, origin)
        if name.endswith(".gz"):
            _unpack(part, name, final)
        else:
            os.replace(part, final)
    for split in SPLITS:  # each split opens as pcamlib reads it: shapes and counts agree
        pcam_h5(partial, split)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _h5_split(root: Path, split: str, need_labels: bool) -> PatchSource:
    """One PCam split: its x file in slices, labels from its y file, slides from its meta csv."""
    x_path, y_path = (root / H5_PATTERN.format(split=split, xy=xy) for xy in "xy")
    if not x_path.is_file():
        raise DataError(f"{x_path}: PCam HDF5 file not found")
    shape, dtype = read_h5(x_path, "x")
    if tuple(shape[1:]) != PATCH_SHAPE or dtype != np.uint8:
        raise DataError(f"{x_path}: dataset 'x' is {shape} {dtype}, expected (N, 96, 96, 3) uint8")
    n, ids = shape[0], [f"{split}/{i}" for i in range(shape[0])]
    source = PatchSource(f"pcam-h5:{x_path.resolve()}", ids, None, parts=[(x_path, n)])
    if y_path.is_file():
        if len(y := read_h5(y_path, "y")) != n:
            raise DataError(f"{y_path}: {len(y)} labels for {n} images in {x_path.name}")
        bad, why = not01(y), "label {!r} is not 0/1".format
        source.problems = [
            Problem(ids[i], f"{y_path}[{i}]", why(y[i].item())) for i in np.flatnonzero(bad)
        ]
        source.labels = np.where(bad, -1, y).astype(np.int8)
    elif need_labels:
        raise DataError(f"{x_path}: no labels (its _y.h5 file is missing)")
    meta = root / f"camelyonpatch_level_2_split_{split}_meta.csv"
    if meta.is_file() and "wsi" in (frame := pd.read_csv(meta)).columns:
        if len(frame) != n:
            raise DataError(f"{meta}: {len(frame)} rows for {n} images")
        source.groups = frame["wsi"].astype(str).to_numpy()
    return source


def pcam_h5(root: str | os.PathLike, split: str | Sequence[str] = "train") -> PatchSource:
    """PCam HDF5 files of one split, or of several one after another (``SPLITS``: all of PCam's
    labelled patches, ids ``valid/7``); slide groups when every meta csv is there."""
    if isinstance(split, str):
        return _h5_split(Path(root), split, need_labels=False)
    splits = [_h5_split(Path(root), s, need_labels=True) for s in split]
    groups = [s.groups for s in splits]
    return PatchSource(
        f"{PCAM_SPLITS}:{Path(root).resolve()}",
        [i for s in splits for i in s.ids],
        np.concatenate([s.labels for s in splits]),
        None if any(g is None for g in groups) else np.concatenate(groups),
        problems=[p for s in splits for p in s.problems],
        parts=[p for s in splits for p in s.parts],
    )


def is_pcam_layout(root: str | os.PathLike) -> bool:
    """Does ``root`` hold PCam's six HDF5 files (x and y of train, valid and test)?"""
    names = (H5_PATTERN.format(split=s, xy=xy) for s in SPLITS for xy in "xy")
    return all((Path(root) / name).is_file() for name in names)
