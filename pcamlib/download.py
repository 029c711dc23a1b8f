"""Fetch the full data, never at import or test time: Kaggle's competition, or PCam from Zenodo.

Notebooks run on the sample in ``data/sample``. The Kaggle competition (Kaggle CLI and
credentials) goes to ``data/full``; PCam's own release (Zenodo record 2546921, CC0, no
credentials) to ``data/pcam``, in the PCam HDF5 layout that :func:`pcamlib.sources.pcam_h5`
reads. Both are safe against interruption: downloads resume in ``OUT.download/``, files are
unpacked into ``OUT.partial/`` and that folder is renamed to ``OUT`` only when complete and
verified. Credentials travel only in the Kaggle CLI's environment: never printed, logged or
written by pcamlib.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO

from .config import KAGGLE_INPUT, on_kaggle, project_root
from .sources import H5_PATTERN, SPLITS, DataError

COMPETITION = "histopathologic-cancer-detection"
HOW_TO_ADD = (
    "add KAGGLE_USERNAME and KAGGLE_KEY as Colab secrets (key icon, left bar; values from "
    "Kaggle → Settings → Create New Token), or KAGGLE_API_TOKEN, or put kaggle.json or "
    "access_token in ~/.kaggle/, or set them in the environment, and accept the rules at "
    "kaggle.com/c/" + COMPETITION
)
SOURCES = ("kaggle", "pcam")
DEFAULT_OUT = {"kaggle": "data/full", "pcam": "data/pcam"}


def _colab_secret(name: str) -> str | None:
    """A Colab secret, or None: not Colab, no such secret, or this notebook has no access."""
    try:
        from google.colab import userdata  # only importable on Colab

        return userdata.get(name) or None
    except Exception:
        return None


def kaggle_credentials() -> dict[str, str] | None:
    """Environment for the Kaggle CLI, from the first source that has credentials, else None.

    Sources, in order: ``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``KAGGLE_API_TOKEN`` in the
    environment, Colab secrets of those names, ``kaggle.json`` (``$KAGGLE_CONFIG_DIR``,
    ``~/.kaggle``, ``~/.config/kaggle``), then ``~/.kaggle/access_token`` (read by Kaggle CLI
    ≥ 1.8 itself, like ``KAGGLE_API_TOKEN``).
    """
    env = dict(os.environ)
    if (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")) or env.get("KAGGLE_API_TOKEN"):
        return env
    secrets = {name: _colab_secret(name) for name in ("KAGGLE_USERNAME", "KAGGLE_KEY")}
    if all(secrets.values()):
        return {**env, **secrets}
    token = _colab_secret("KAGGLE_API_TOKEN")
    if token:
        return {**env, "KAGGLE_API_TOKEN": token}
    config = env.get("KAGGLE_CONFIG_DIR")
    folders = [Path(config)] if config else []
    folders += [Path.home() / ".kaggle", Path.home() / ".config" / "kaggle"]
    for folder in folders:
        if (folder / "kaggle.json").is_file():
            return {**env, "KAGGLE_CONFIG_DIR": str(folder)}
    tokens = [Path.home() / ".kaggle" / name for name in ("access_token", "access_token.txt")]
    if any(t.is_file() and t.read_text().strip() for t in tokens):
        return env
    return None


def resolve_out(out: str | os.PathLike) -> Path:
    """A relative ``out`` is relative to the project root, wherever the command runs from."""
    out = Path(out).expanduser()
    return out if out.is_absolute() else project_root() / out


def download_competition(out: str | os.PathLike = "data/full", *, force: bool = False) -> Path:
    """Download and unpack the competition into ``out`` (train/, test/, train_labels.csv…).

    Returns at once when ``out`` already holds the unpacked data, unless ``force``.
    """
    from tqdm.auto import tqdm

    out = resolve_out(out)
    if (out / "train_labels.csv").is_file() and not force:
        return out
    env = kaggle_credentials()
    if env is None:
        raise DataError(f"no Kaggle credentials: {HOW_TO_ADD}")
    if shutil.which("kaggle") is None:
        raise DataError("the kaggle command is not installed: pip install 'pcamlib[kaggle]'")
    archive = _fetch_archive(out.with_name(out.name + ".download"), env)
    # Unzip into out.partial, then rename: `out` appears only whole.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted unpack starts over
    with zipfile.ZipFile(archive) as zf:
        for member in tqdm(zf.infolist(), desc="unpacking", unit="file", mininterval=1):
            zf.extract(member, partial)
    if not (partial / "train_labels.csv").is_file():
        raise DataError(f"{archive}: the archive has no train_labels.csv")
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    shutil.rmtree(archive.parent, ignore_errors=True)
    return out


def _fetch_archive(folder: Path, env: dict[str, str]) -> Path:
    """The competition zip in ``folder``, downloaded (with the CLI's progress bar) if needed."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{COMPETITION}.zip"
    if zipfile.is_zipfile(archive):  # a finished earlier download (False when missing)
        return archive
    for _ in range(2):
        command = ["kaggle", "competitions", "download", "-c", COMPETITION, "-p", str(folder)]
        done = subprocess.run(command, env=env)
        if done.returncode != 0:
            raise DataError(
                f"kaggle download failed (exit {done.returncode}); check the credentials and "
                f"that you accepted the rules at kaggle.com/c/{COMPETITION}; rerun to resume"
            )
        if zipfile.is_zipfile(archive):
            return archive
        archive.unlink(missing_ok=True)  # truncated: fetch it again, once
    raise DataError(f"{archive}: the download is not a readable zip archive twice in a row")


# --- PCam from Zenodo (or a mirror) -------------------------------------------------------

ZENODO_URL = "https://zenodo.org/records/2546921/files/{name}?download=1"
SUMS = "SHA256SUMS"
CHUNK = 1 << 20
USER_AGENT = "pcamlib (+https://github.com/pcamlib/pcamlib)"
TIMEOUT_S = 60  # per read: a stalled connection counts as a network error, then resumes


def _gz(split: str, xy: str) -> str:
    return H5_PATTERN.format(split=split, xy=xy) + ".gz"


def _meta(split: str) -> str:
    return f"camelyonpatch_level_2_split_{split}_meta.csv"


# Small files first, so that a wrong URL or checksum shows before gigabytes are fetched.
PCAM_HDF5 = [_gz(s, "y") for s in SPLITS] + [_gz(s, "x") for s in ("valid", "test", "train")]
PCAM_META = [_meta(s) for s in SPLITS]


@dataclass(frozen=True)
class Expected:
    """What a release publishes for one file: its size in bytes (None: not published) and
    its checksum (``algorithm`` as :func:`hashlib.new` names it, hex ``digest``)."""

    size: int | None
    algorithm: str
    digest: str


# Zenodo record 2546921 as TensorFlow Datasets pins it: size and SHA-256 of each .h5.gz from
# tensorflow/datasets, tensorflow_datasets/datasets/patch_camelyon/checksums.tsv (identical to
# the older tensorflow_datasets/url_checksums/patch_camelyon.txt).
_TFDS_SHA256 = [  # split, x/y, size, SHA-256
    ("train", "x", 6421353462, "d619e741468a7ab35c7e4a75e6821b7e7e6c9411705d45708f2a0efc8960656c"),
    ("train", "y", 21378, "b74126d2c01b20d3661f9b46765d29cf4e4fba6faba29c8e0d09d406331ab75a"),
    ("valid", "x", 805965320, "f82ee1670d027b4ec388048d9eabc2186b77c009655dae76d624c0ecb053ccb2"),
    ("valid", "y", 3038, "ce1ae30f08feb468447971cfd0472e7becd0ad96d877c64120c72571439ae48c"),
    ("test", "x", 800875929, "79174c2201ad521602a5888be8f36ee10875f37403dd3f2086caf2182ef87245"),
    ("test", "y", 3040, "0a522005fccc8bbd04c5a117bfaf81d8da2676f03a29d7499f71d0a0bd6068ef"),
]
# The meta csvs' MD5 under their Zenodo names (no size is published). basveeling/pcam's README
# lists the valid and test MD5s the other way round (of every file pair); scripts that verify
# Zenodo's own files by name find these, so valid/test here follow Zenodo's names, as TFDS does.
_ZENODO_MD5 = {
    _meta("train"): "5a3dd671e465cfd74b5b822125e65b0a",
    _meta("valid"): "67589e00a4a37ec317f2d1932c7502ca",
    _meta("test"): "3455fd69135b66734e1008f3af684566",
}
ZENODO_FILES: dict[str, Expected] = {
    **{_gz(s, xy): Expected(size, "sha256", digest) for s, xy, size, digest in _TFDS_SHA256},
    **{name: Expected(None, "md5", digest) for name, digest in _ZENODO_MD5.items()},
}


@dataclass(frozen=True)
class Release:
    """Where the PCam files are (``url(name)``) and what each must be (``files``, in order)."""

    template: str  # "{name}" is replaced by the file name
    files: dict[str, Expected]
    origin: str  # for messages: where the checksums come from

    def url(self, name: str) -> str:
        return self.template.format(name=name)


def zenodo_release() -> Release:
    """PCam's own release on Zenodo, checked against the sizes and checksums built in above."""
    files = {name: ZENODO_FILES[name] for name in PCAM_META + PCAM_HDF5}
    return Release(ZENODO_URL, files, "pcamlib's built-in checksums (TFDS, Zenodo)")


def mirror_release(url: str, *, timeout: float = TIMEOUT_S) -> Release:
    """A mirror (or a test server) serving PCam's file names under ``url/`` with ``SHA256SUMS``.

    Every HDF5 file needs a line in ``SHA256SUMS``; the meta csvs are fetched when listed.
    """
    base = url.rstrip("/")
    sums_url = f"{base}/{SUMS}"
    try:
        with urllib.request.urlopen(_request(sums_url), timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise DataError(f"{SUMS}: HTTP {exc.code} {exc.reason} from {sums_url}") from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        raise DataError(f"{SUMS}: cannot fetch {sums_url} ({_reason(exc)})") from None
    listed = _parse_sums(text, sums_url)
    missing = [name for name in PCAM_HDF5 if name not in listed]
    if missing:
        raise DataError(f"{sums_url}: no checksum for {', '.join(missing)}")
    files = {n: Expected(None, "sha256", listed[n]) for n in PCAM_META + PCAM_HDF5 if n in listed}
    return Release(base.replace("{", "{{").replace("}", "}}") + "/{name}", files, sums_url)


def _parse_sums(text: str, where: str) -> dict[str, str]:
    """``sha256sum`` output (``DIGEST  NAME`` or ``DIGEST *NAME``) → {name: digest}."""
    listed = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.strip())
        if match is None:
            raise DataError(f"{where}:{number}: not a sha256sum line: {line[:80]!r}")
        listed[Path(match[2]).name] = match[1].lower()
    return listed


def _request(url: str, start: int = 0) -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.Request(url, headers=headers)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason) or type(exc).__name__


class _Interrupted(Exception):
    """The connection failed part-way: the bytes so far are kept and the next try resumes."""


def _write_error(path: Path, exc: OSError) -> DataError:
    """A full disk (or another write error) as one line naming ``path``."""
    if exc.errno == errno.ENOSPC:
        free = shutil.disk_usage(path.parent).free
        return DataError(
            f"{path}: disk full ({free / 2**20:,.0f} MiB free); free some space and rerun to resume"
        )
    return DataError(f"{path}: cannot write ({exc.strerror or exc})")


def _write(f: BinaryIO, data: bytes, path: Path) -> None:
    """Write all of ``data`` to an unbuffered file (so closing it never fails for lack of
    space); a write error is one line naming ``path``."""
    view = memoryview(data)
    try:
        while view:
            view = view[f.write(view) :]
    except OSError as exc:
        raise _write_error(path, exc) from None


def _sync(f: BinaryIO, path: Path) -> None:
    try:
        os.fsync(f.fileno())
    except OSError as exc:
        raise _write_error(path, exc) from None


def _total(response, start: int) -> int | None:
    """The file's full size from a 206's Content-Range or a 200's Content-Length."""
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if match:
        return int(match[1])
    length = response.headers.get("Content-Length")
    return None if length is None else start + int(length)


def _open(url: str, name: str, start: int, timeout: float):
    """The response for ``url`` from byte ``start``, or None when nothing is left to fetch."""
    try:
        return urllib.request.urlopen(_request(url, start), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the range starts at the end: the file is complete
            return None
        if exc.code >= 500:
            raise _Interrupted(f"HTTP {exc.code} {exc.reason}") from None
        raise DataError(f"{name}: HTTP {exc.code} {exc.reason} from {url}") from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        raise _Interrupted(_reason(exc)) from None


def _transfer(url: str, name: str, part: Path, expected: int | None, bar, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (a Range request from its current size)."""
    start = part.stat().st_size if part.exists() else 0
    if expected is not None and start >= expected:
        return  # complete (or too long, which the size check names)
    response = _open(url, name, start, timeout)
    if response is None:
        return
    with response:
        if start and response.status != 206:  # the server ignored the Range: start over
            start = 0
        total = _total(response, start)
        if expected is not None and total is not None and total != expected:
            raise DataError(
                f"{name}: {url} serves {total:,} bytes, but the release publishes {expected:,}"
            )
        bar.reset(total=total)
        bar.update(start)
        received = start
        with open(part, "ab" if start else "wb", buffering=0) as f:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, HTTPException) as exc:
                    raise _Interrupted(_reason(exc)) from None
                if not chunk:
                    break
                _write(f, chunk, part)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise _Interrupted(f"connection closed at byte {received:,} of {total:,}")


def _fetch(release: Release, name: str, folder: Path, retries: int, progress: bool) -> Path:
    """``folder/name``, downloaded (resuming ``name.part``) and of the published size."""
    done, part = folder / name, folder / (name + ".part")
    expected = release.files[name].size
    if done.is_file():
        _check_size(done, name, expected)
        return done
    url = release.url(name)
    with _bytes_bar(name, expected, progress) as bar:
        for attempt in range(retries + 1):
            try:
                _transfer(url, name, part, expected, bar, TIMEOUT_S)
                break
            except _Interrupted as exc:
                have = part.stat().st_size if part.exists() else 0
                if attempt == retries:
                    raise DataError(
                        f"{name}: network error after {have:,} bytes ({exc}); rerun to resume"
                    ) from None
                time.sleep(min(2**attempt, 30))
    _check_size(part, name, expected)
    os.replace(part, done)
    return done


def _check_size(path: Path, name: str, expected: int | None) -> None:
    size = path.stat().st_size
    if expected is not None and size != expected:
        path.unlink()
        raise DataError(
            f"{name}: {size:,} bytes downloaded, the release publishes {expected:,} "
            "(removed; rerun to fetch it again)"
        )


class _Hashing:
    """A read-only file wrapper that hashes (and counts on ``bar``) every byte read."""

    def __init__(self, f: BinaryIO, digest, bar):
        self.f, self.digest, self.bar = f, digest, bar

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.digest.update(data)
        self.bar.update(len(data))
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def unpacked_name(name: str) -> str:
    """The name a release file has in the dataset folder (``.h5.gz`` → ``.h5``)."""
    return name.removesuffix(".gz")


def _bytes_bar(desc: str, total: int | None, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(
        desc=desc, total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress
    )


def _install(src: Path, name: str, release: Release, final: Path, progress: bool) -> None:
    """Verify ``src`` against its checksum while gunzipping (or copying) it to ``final``."""
    expected = release.files[name]
    digest, tmp = hashlib.new(expected.algorithm), final.with_name(f".{final.name}.tmp")
    packed = name.endswith(".gz")
    bad_gzip = None
    try:
        bar = _bytes_bar(f"{'unpacking' if packed else 'verifying'} {name}", None, progress)
        with open(src, "rb") as raw, open(tmp, "wb", buffering=0) as out, bar:
            bar.reset(total=src.stat().st_size)
            reader = _Hashing(raw, digest, bar)
            stream = gzip.GzipFile(fileobj=reader, mode="rb") if packed else reader
            try:
                while chunk := stream.read(CHUNK):
                    _write(out, chunk, tmp)
            except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
                bad_gzip = exc
            reader.drain()  # hash every byte, whatever gzip left unread
            _sync(out, tmp)
        _verify(src, name, expected, digest.hexdigest(), release.origin)
        if bad_gzip is not None:
            raise DataError(f"{name}: not a readable gzip file ({bad_gzip})")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _verify(src: Path, name: str, expected: Expected, got: str, origin: str) -> None:
    if got != expected.digest:
        src.unlink()
        raise DataError(
            f"{name}: {expected.algorithm.upper()} checksum mismatch (got {got}, {origin} say "
            f"{expected.digest}); the download was removed, rerun to fetch it again"
        )


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One downloader per output folder at a time (a second one waits, then reuses)."""
    import fcntl  # POSIX only

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is downloading into {folder} …")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def pcam_complete(folder: Path) -> bool:
    """Does ``folder`` hold the six PCam HDF5 files (the layout ``pcam_h5`` reads)?"""
    return all((folder / unpacked_name(name)).is_file() for name in PCAM_HDF5)


def _check_layout(folder: Path) -> None:
    """Every split opens as pcamlib reads it: shapes, label counts and meta rows agree."""
    from .sources import pcam_h5

    for split in SPLITS:
        source = pcam_h5(folder, split)
        if source.labels is None:
            raise DataError(f"{folder}: {H5_PATTERN.format(split=split, xy='y')} is missing")


def download_pcam(
    out: str | os.PathLike = "data/pcam",
    *,
    mirror: str | None = None,
    release: Release | None = None,
    force: bool = False,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Download PCam (Zenodo, or ``mirror``) into ``out`` in the PCam HDF5 layout; no credentials.

    Each file is fetched with resumable Range requests into ``OUT.download/``, its size and
    checksum are verified while it is gunzipped into ``OUT.partial/``, and ``OUT.partial`` is
    renamed to ``out`` once every file is there and every split opens. A rerun resumes
    where a failure stopped; ``retries`` network errors per file are resumed at once. Returns
    at once when ``out`` is complete, unless ``force``. ``release`` overrides the URLs and
    checksums (tests, other hosts).
    """
    out = resolve_out(out)
    if pcam_complete(out) and not force:
        return out
    if release is None:
        release = mirror_release(mirror) if mirror else zenodo_release()
    work, partial = out.with_name(out.name + ".download"), out.with_name(out.name + ".partial")
    with _locked(work):
        if pcam_complete(out) and not force:  # another process finished it while we waited
            return out
        partial.mkdir(parents=True, exist_ok=True)
        for name in release.files:
            final = partial / unpacked_name(name)
            if final.is_file():  # verified and unpacked by an earlier run
                continue
            src = _fetch(release, name, work, retries, progress)
            _install(src, name, release, final, progress)
            src.unlink()  # the unpacked copy is verified: keep the disk for the next file
        _check_layout(partial)
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def get_full_data(
    out: str | os.PathLike | None = None, *, source: str = "kaggle", mirror: str | None = None
) -> Path | None:
    """The notebooks' one call: the full data in ``out``, downloaded once; None without it.

    ``source="kaggle"`` (default): the competition into ``data/full`` when credentials exist;
    without them it prints how to add them and returns None, and the series goes on with the
    sample. ``source="pcam"``: PCam's own release into ``data/pcam`` (no credentials; see
    :func:`download_pcam`, ``mirror`` included).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}; got {source!r}")
    out = resolve_out(out if out is not None else DEFAULT_OUT[source])
    if source == "pcam":
        return download_pcam(out, mirror=mirror)
    if mirror is not None:
        raise ValueError("mirror is for source='pcam'; the Kaggle data comes from the Kaggle CLI")
    if on_kaggle():  # Kaggle Notebooks: the competition is attached as (read-only) input
        return KAGGLE_INPUT
    if (out / "train_labels.csv").is_file():
        return out
    if kaggle_credentials() is None:
        print(
            "No Kaggle credentials: the series uses the embedded sample. "
            f"To get the full data, {HOW_TO_ADD}."
        )
        return None
    return download_competition(out)
