"""The full data: PCam's release (Zenodo 2546921, CC0) in ``pcam_h5``'s layout, or the competition
(:mod:`pcamlib.kaggle`). An interruption loses nothing: files resume with Range requests in
``OUT.download/``, are verified and unpacked into ``OUT.partial/``, renamed ``OUT`` when whole.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import zlib
from http.client import HTTPException
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm  # text bars: tqdm.auto warns in kernels without ipywidgets

from .config import KAGGLE_INPUT, on_kaggle
from .kaggle import FULL_DATA, HOW_TO_ADD, download_competition, kaggle_credentials, resolve_out
from .sources import SPLITS, DataError, pcam_h5

DEFAULT_OUT = {"kaggle": FULL_DATA, "pcam": "data/pcam"}
ZENODO_URL = "https://zenodo.org/records/2546921/files/{name}?download=1"
SUMS = "SHA256SUMS"
CHUNK = 1 << 20
USER_AGENT = "pcamlib (+https://github.com/pcamlib/pcamlib)"
TIMEOUT_S = 60  # per read: a stalled connection counts as a network error, then resumes
NETWORK_ERRORS = (urllib.error.URLError, OSError, HTTPException)


class Expected(NamedTuple):
    """A release file's size (None: not published) and checksum (a :func:`hashlib.new` name)."""

    size: int | None
    algorithm: str
    digest: str


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
ZENODO_FILES = {
    f"camelyonpatch_level_2_split_{file}{'.csv' if size is None else '.h5.gz'}": Expected(
        size, "md5" if size is None else "sha256", digest
    )
    for file, size, digest in _PINNED
}
PCAM_META, PCAM_HDF5 = ([n for n in ZENODO_FILES if n.endswith(end)] for end in (".csv", ".gz"))


class Release(NamedTuple):
    """Where the PCam files are and what each must be (``files``, in order)."""

    template: str  # "{name}" is replaced by the file name
    files: dict[str, Expected]
    origin: str  # for messages: where the checksums come from


def zenodo_release() -> Release:
    """PCam's own release on Zenodo, checked against the sizes and checksums built in above."""
    return Release(ZENODO_URL, dict(ZENODO_FILES), "pcamlib's built-in checksums (TFDS, Zenodo)")


def mirror_release(url: str) -> Release:
    """PCam's files under ``url/``, checked by its ``SHA256SUMS`` (every HDF5 file needs a line)."""
    base, sums_url = url.rstrip("/"), f"{url.rstrip('/')}/{SUMS}"
    try:
        with _open(sums_url, SUMS) as response:
            text = response.read().decode("utf-8", "replace")
    except (_Interrupted, *NETWORK_ERRORS) as exc:
        raise DataError(f"{SUMS}: cannot fetch {sums_url} ({exc})") from None
    listed = {}
    for number, line in enumerate(text.splitlines(), 1):
        if match := re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.strip()):
            listed[Path(match[2]).name] = match[1].lower()
        elif line.strip():
            raise DataError(f"{sums_url}:{number}: not a sha256sum line: {line[:80]!r}")
    if missing := [name for name in PCAM_HDF5 if name not in listed]:
        raise DataError(f"{sums_url}: no checksum for {', '.join(missing)}")
    files = {n: Expected(None, "sha256", listed[n]) for n in PCAM_META + PCAM_HDF5 if n in listed}
    return Release(base.replace("{", "{{").replace("}", "}}") + "/{name}", files, sums_url)


class _Interrupted(Exception):
    """The connection failed part-way: the bytes so far are kept and the next try resumes."""


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


def _transfer(url: str, name: str, part: Path, expected: int | None, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (a Range request from its current size)."""
    start = part.stat().st_size if part.exists() else 0
    if expected is not None and start >= expected:
        return  # complete (or too long, which the size check names)
    with _open(url, name, start) as response:
        if response is None:
            return
        if start and response.status != 206:  # the server ignored the Range: start over
            start = 0
        length = response.headers.get("Content-Length")  # of the range: the rest of the file
        total = None if length is None else start + int(length)
        if None not in (expected, total) and total != expected:
            publishes = f"serves {total:,} bytes, but the release publishes {expected:,}"
            raise DataError(f"{name}: {url} {publishes}")
        with _writing(part), open(part, "ab" if start else "wb") as raw:
            bar = dict(total=total, initial=start, desc=name, disable=not progress)
            with tqdm.wrapattr(raw, "write", **bar) as f:
                while chunk := _read(response):
                    f.write(chunk)
    if total is not None and (have := part.stat().st_size) < total:
        raise _Interrupted(f"connection closed at byte {have:,} of {total:,}")


def _read(response) -> bytes:
    try:
        return response.read(CHUNK)
    except (OSError, HTTPException) as exc:
        raise _Interrupted(str(exc) or type(exc).__name__) from None


def _fetch(release: Release, name: str, part: Path, retries: int, progress: bool) -> None:
    """Download ``name`` to ``part``, resuming what is there, ``retries`` times at once."""
    for attempt in range(retries + 1):
        try:
            return _transfer(
                release.template.format(name=name), name, part, release.files[name].size, progress
            )
        except _Interrupted as exc:
            if attempt == retries:
                have = f"{part.stat().st_size if part.exists() else 0:,} bytes ({exc})"
                raise DataError(f"{name}: network error after {have}; rerun to resume") from None
            time.sleep(min(2**attempt, 30))


def _verify(src: Path, name: str, release: Release, progress: bool) -> None:
    """Refuse (and remove, to fetch it again) ``src`` unless of the published size and checksum."""
    expected, size = release.files[name], src.stat().st_size
    digest = hashlib.new(expected.algorithm)
    bar = dict(total=size, desc=f"verifying {name}", disable=not progress)
    with open(src, "rb") as raw, tqdm.wrapattr(raw, "read", **bar) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    if expected.size not in (None, size):
        problem = f"{size:,} bytes downloaded, the release publishes {expected.size:,}"
    elif digest.hexdigest() != expected.digest:
        problem = (
            f"{expected.algorithm.upper()} checksum mismatch (got {digest.hexdigest()}, "
            f"{release.origin} say {expected.digest})"
        )
    else:
        return
    src.unlink()
    raise DataError(f"{name}: {problem}; the download was removed, rerun to fetch it again")


def _unpack(src: Path, name: str, final: Path, progress: bool) -> None:
    """Gunzip ``src`` to ``final`` through a temporary file (``final`` appears only whole)."""
    tmp = final.with_name(f".{final.name}.tmp")
    bar = dict(total=src.stat().st_size, desc=f"unpacking {name}", disable=not progress)
    try:
        with open(src, "rb") as raw, tqdm.wrapattr(raw, "read", **bar) as f:
            with _writing(tmp), open(tmp, "wb") as out:
                shutil.copyfileobj(gzip.GzipFile(fileobj=f), out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, final)
        src.unlink()  # the unpacked copy is verified: keep the disk for the next file
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: not a readable gzip file ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def pcam_complete(folder: Path) -> bool:
    """Does ``folder`` hold the six PCam HDF5 files (the layout ``pcam_h5`` reads)?"""
    return all((folder / name.removesuffix(".gz")).is_file() for name in PCAM_HDF5)


def download_pcam(
    out: str | os.PathLike = "data/pcam",
    *,
    mirror: str | None = None,
    release: Release | None = None,
    force: bool = False,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """PCam (Zenodo, or ``mirror``; no credentials) in ``out``, in the PCam HDF5 layout. A file
    resumes after ``retries`` network errors (or a rerun); ``release`` overrides URLs, checksums."""
    out = resolve_out(out)
    if pcam_complete(out) and not force:
        return out
    release = release or (mirror_release(mirror) if mirror else zenodo_release())
    work, partial = out.with_name(out.name + ".download"), out.with_name(out.name + ".partial")
    for folder in (work, partial):
        folder.mkdir(parents=True, exist_ok=True)
    for name in release.files:
        final, part = partial / name.removesuffix(".gz"), work / f"{name}.part"
        if final.is_file():  # verified and unpacked by an earlier run
            continue
        _fetch(release, name, part, retries, progress)
        _verify(part, name, release, progress)
        if name.endswith(".gz"):
            _unpack(part, name, final, progress)
        else:
            os.replace(part, final)
    for split in SPLITS:  # each split opens as pcamlib reads it: shapes and counts agree
        pcam_h5(partial, split)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def get_full_data(
    out: str | os.PathLike | None = None, *, source: str = "kaggle", mirror: str | None = None
) -> Path | None:
    """The notebooks' one call: the full data in ``out``, downloaded once. ``"kaggle"``: the
    competition (on Kaggle, its attached input), or without credentials a one-line hint and None,
    so the series goes on with the sample. ``"pcam"``: PCam's release."""
    if source not in DEFAULT_OUT:
        raise ValueError(f"source must be one of {', '.join(DEFAULT_OUT)}; got {source!r}")
    out = resolve_out(out if out is not None else DEFAULT_OUT[source])
    if source == "pcam":
        return download_pcam(out, mirror=mirror)
    if mirror is not None:
        raise ValueError("mirror is for source='pcam'; the Kaggle data comes from the Kaggle CLI")
    if on_kaggle():  # Kaggle Notebooks: the competition is attached as (read-only) input
        return KAGGLE_INPUT
    if kaggle_credentials() is None and not (out / "train_labels.csv").is_file():
        print(
            "No Kaggle credentials: the series uses the embedded sample. To get the full data, "
            f"{HOW_TO_ADD}."
        )
        return None
    return download_competition(out)
