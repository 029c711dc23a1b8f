"""PCam from Zenodo (here: a loopback mirror): resumable, verified, atomic, and readable."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from pcamlib import pcam as download
from pcamlib.cache import load_patches
from pcamlib.cli import main
from pcamlib.config import SAMPLE_DIR
from pcamlib.kaggle import get_full_data
from pcamlib.pcam import PCAM_HDF5, PCAM_META, ZENODO_FILES, download_pcam
from pcamlib.sources import DataError, read_image

SIZES = {"train": 6, "valid": 4, "test": 4}
TRAIN_X = "camelyonpatch_level_2_split_train_x.h5.gz"


def h5_bytes(name: str, data: np.ndarray) -> bytes:
    """An HDF5 file with one dataset, as bytes (PCam: ``x`` (N,96,96,3), ``y`` (N,1,1,1))."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset(name, data=data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def release_files() -> dict[str, bytes]:
    """PCam's nine files in the real format, made from patches of the embedded sample."""
    labels = pd.read_csv(SAMPLE_DIR / "train_labels.csv", dtype=str)
    files, start = {}, 0
    for split, n in SIZES.items():
        rows = labels.iloc[start : start + n]
        start += n
        x = np.stack([read_image(SAMPLE_DIR / "train" / f"{i}.tif") for i in rows["id"]])
        y = rows["label"].astype(np.uint8).to_numpy().reshape(-1, 1, 1, 1)
        prefix = f"camelyonpatch_level_2_split_{split}"
        files[f"{prefix}_x.h5.gz"] = gzip.compress(h5_bytes("x", x))
        files[f"{prefix}_y.h5.gz"] = gzip.compress(h5_bytes("y", y))
        meta = pd.DataFrame(
            {
                "coord_y": np.arange(n) * 96,
                "coord_x": np.arange(n) * 96,
                "tumor_patch": y.ravel() == 1,
                "center_tumor_patch": y.ravel() == 1,
                "wsi": [f"{split}_slide_{i % 2}" for i in range(n)],
            }
        )
        files[f"{prefix}_meta.csv"] = meta.to_csv().encode()  # PCam's unnamed index column
    return files


def sha256sums(files: dict[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in files.items()).encode()


class Handler(BaseHTTPRequestHandler):
    """GET with ``Range: bytes=N-``; ``server.drops[name] = k`` cuts that file at byte k once."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        server = self.server
        server.log.append((name, self.headers.get("Range")))
        data = server.files.get(name)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "bytes=0-")[1])
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = server.drops.pop(name, None)
        if cut is not None and cut > start:
            self.wfile.write(data[start:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-file
            return
        self.wfile.write(data[start:])


@pytest.fixture
def mirror(release_files):
    """A loopback mirror: ``.url``, ``.files`` (name → bytes, SHA256SUMS included), ``.drops``
    and ``.log`` (every request's file name and Range header)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.files = {**release_files, "SHA256SUMS": sha256sums(release_files)}
    server.drops, server.log = {}, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/pcam"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def requests_for(server, name: str) -> list:
    return [rng for logged, rng in server.log if logged == name]


def assert_nothing_looks_complete(out: Path) -> None:
    """``out`` is absent and what is left is named .partial/.download, never the output."""
    assert not out.exists()
    assert {p.name for p in out.parent.iterdir()} <= {f"{out.name}.partial", f"{out.name}.download"}
    with pytest.raises(DataError, match="does not exist"):
        load_patches(out, "train")


def test_downloads_verifies_and_writes_the_layout_pcamlib_reads(mirror, release_files, tmp_path):
    out = tmp_path / "data" / "pcam"
    assert download_pcam(out, mirror=mirror.url) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["pcam"]  # nothing else left
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [n.removesuffix(".gz") for n in PCAM_HDF5] + PCAM_META
    )
    for split, n in SIZES.items():
        cache = load_patches(out, split, cache_dir=tmp_path / "cache" / split, progress=False)
        packed = release_files[f"camelyonpatch_level_2_split_{split}_x.h5.gz"]
        with h5py.File(io.BytesIO(gzip.decompress(packed))) as f:
            x = f["x"][:]
        # 'train' there is all three splits, the data runs are made from; valid and test alone
        rows = [i for i, item in enumerate(cache.ids) if item.startswith(f"{split}/")]
        assert len(rows) == n and len(cache) == (sum(SIZES.values()) if split == "train" else n)
        np.testing.assert_array_equal(cache.images[rows], x)
        assert cache.labels is not None
        assert sorted(set(cache.groups[rows])) == [f"{split}_slide_0", f"{split}_slide_1"]
    served = len(mirror.log)
    assert download_pcam(out, mirror=mirror.url) == out
    assert len(mirror.log) == served  # complete: nothing is fetched again


def test_a_dropped_connection_is_refused_by_name_then_the_rerun_resumes(mirror, tmp_path):
    out = tmp_path / "pcam"
    cut = len(mirror.files[TRAIN_X]) // 2
    mirror.drops[TRAIN_X] = cut
    with pytest.raises(DataError, match=rf"^{TRAIN_X}: network error after {cut:,} bytes"):
        download_pcam(out, mirror=mirror.url)
    assert_nothing_looks_complete(out)
    assert (tmp_path / "pcam.download" / f"{TRAIN_X}.part").stat().st_size == cut
    assert download_pcam(out, mirror=mirror.url) == out
    assert requests_for(mirror, TRAIN_X) == [None, f"bytes={cut}-"]  # resumed, not restarted
    assert requests_for(mirror, PCAM_HDF5[0]) == [None]  # finished files are not fetched again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pcam"]  # nothing else left


def test_a_checksum_mismatch_is_refused_by_name_and_the_bad_file_removed(mirror, tmp_path):
    name = "camelyonpatch_level_2_split_valid_y.h5.gz"
    data = bytearray(mirror.files[name])
    data[len(data) // 2] ^= 0xFF  # same size, one byte wrong
    mirror.files[name] = bytes(data)
    out = tmp_path / "pcam"
    with pytest.raises(DataError, match=rf"^{name}: SHA256 checksum mismatch \(got [0-9a-f]{{64}}"):
        download_pcam(out, mirror=mirror.url)
    assert_nothing_looks_complete(out)
    assert not list((tmp_path / "pcam.download").glob(name + "*"))  # refetched on a rerun


def zenodo_at(monkeypatch, url: str, size: int, digest: str) -> None:
    """Zenodo's release stood in for by ``url``: its one file TRAIN_X, of that size and digest."""
    monkeypatch.setattr(download, "ZENODO_URL", url + "/{name}")
    monkeypatch.setattr(download, "ZENODO_FILES", {TRAIN_X: (size, digest)})


def test_a_published_size_that_differs_is_refused_by_name(mirror, tmp_path, monkeypatch):
    zenodo_at(monkeypatch, mirror.url, len(mirror.files[TRAIN_X]) + 1, "0" * 64)
    with pytest.raises(DataError, match=rf"^{TRAIN_X}: .* serves [\d,]+ bytes, but the release"):
        download_pcam(tmp_path / "pcam")
    assert not (tmp_path / "pcam").exists()


@pytest.mark.parametrize("missing", ["camelyonpatch_level_2_split_test_x.h5.gz", "SHA256SUMS"])
def test_a_404_is_refused_by_name(mirror, tmp_path, missing):
    del mirror.files[missing]
    out = tmp_path / "pcam"
    with pytest.raises(DataError, match=rf"^{missing}: HTTP 404 Not Found from http://127"):
        download_pcam(out, mirror=mirror.url)
    assert not out.exists()


def test_no_server_is_a_network_error_naming_the_file(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    zenodo_at(monkeypatch, f"http://127.0.0.1:{port}", 9, "0" * 32)
    with pytest.raises(DataError, match=rf"^{TRAIN_X}: network error after 0 bytes \(.*refused"):
        download_pcam(tmp_path / "pcam")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_refused_by_name(mirror, tmp_path, monkeypatch):
    target = tmp_path / "pcam.download" / f"{PCAM_META[0]}.part"  # the first file fetched
    target.parent.mkdir()
    target.symlink_to("/dev/full")  # writes there fail with ENOSPC, as on a full disk
    with pytest.raises(DataError, match=rf"^{re.escape(str(target))}: disk full \("):
        download_pcam(tmp_path / "pcam", mirror=mirror.url)
    target.unlink()

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download.shutil, "copyfileobj", no_space)  # the first unpack
    partial = re.escape(str(tmp_path / "pcam.partial"))
    with pytest.raises(DataError, match=rf"^{partial}/\.camelyon.*\.h5: disk full \("):
        download_pcam(tmp_path / "pcam", mirror=mirror.url)
    assert not (tmp_path / "pcam").exists()
    assert len(list((tmp_path / "pcam.partial").iterdir())) == 3  # the meta csvs, no temp file


def test_mirror_checksums_must_cover_every_hdf5_file(mirror, tmp_path):
    listed = {n: b for n, b in mirror.files.items() if n != TRAIN_X and n != "SHA256SUMS"}
    mirror.files["SHA256SUMS"] = sha256sums(listed)
    with pytest.raises(DataError, match=rf"SHA256SUMS: no checksum for {TRAIN_X}$"):
        download_pcam(tmp_path / "pcam", mirror=mirror.url)
    mirror.files["SHA256SUMS"] = b"not a checksum line\n"
    with pytest.raises(DataError, match=r"SHA256SUMS:1: not a sha256sum line"):
        download_pcam(tmp_path / "pcam", mirror=mirror.url)


def test_zenodo_checksums_are_built_in_for_all_nine_files():
    assert list(ZENODO_FILES) == PCAM_META + PCAM_HDF5  # small files first
    for name, (size, digest) in ZENODO_FILES.items():
        is_meta = name.endswith(".csv")  # an MD5, no size; a SHA-256 and the size
        assert re.fullmatch(f"[0-9a-f]{{{32 if is_meta else 64}}}", digest)
        assert (size is None) == is_meta
    assert ZENODO_FILES[TRAIN_X][0] == 6_421_353_462
    url = f"https://zenodo.org/records/2546921/files/{TRAIN_X}?download=1"
    assert download.ZENODO_URL.format(name=TRAIN_X) == url


def test_get_full_data_and_the_cli_take_source_pcam(mirror, tmp_path, capsys):
    out = tmp_path / "pcam"
    assert get_full_data(out, source="pcam", mirror=mirror.url) == out
    with pytest.raises(ValueError, match="source must be one of kaggle, pcam"):
        get_full_data(out, source="zenodo")
    again = tmp_path / "again"
    assert main(["download", "--source", "pcam", "--out", str(again), "--mirror", mirror.url]) == 0
    assert capsys.readouterr().out.strip() == f"downloaded to {again}"
    assert main(["download", "--out", str(tmp_path / "k"), "--mirror", mirror.url]) == 2
    assert "--mirror http://127.0.0.1" in capsys.readouterr().err
