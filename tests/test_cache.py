"""Packing: pack once, resume after a kill, reuse while unchanged, name every bad item."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile

from pcamlib import cache as cache_mod
from pcamlib import config, sources
from pcamlib.cache import PackedCache, content_hash, default_cache_dir, load_patches, pack
from pcamlib.config import SAMPLE_DIR
from pcamlib.sources import DataError, open_source, read_image

LABELS = pd.read_csv(SAMPLE_DIR / "train_labels.csv", dtype=str)
REPO = Path(__file__).resolve().parent.parent


def sample_tiff(k: int) -> Path:
    return SAMPLE_DIR / "train" / f"{LABELS.id[k]}.tif"


def make_kaggle(root: Path, n: int) -> Path:
    (root / "train").mkdir(parents=True)
    for k in range(n):
        shutil.copyfile(sample_tiff(k), root / "train" / f"{LABELS.id[k]}.tif")
    LABELS[:n].to_csv(root / "train_labels.csv", index=False)
    return root


@pytest.fixture
def reads(monkeypatch) -> list:
    """Counts image decodes (pack calls them from several threads)."""
    seen, lock = [], threading.Lock()

    def counting(path):
        with lock:
            seen.append(Path(path).name)
        return read_image(path)

    monkeypatch.setattr(sources, "read_image", counting)
    return seen


def test_pack_sample_is_exact_and_verified(tmp_path):
    cache = pack(SAMPLE_DIR, tmp_path / "c", progress=False)
    assert len(cache) == 1600 and cache.images.shape == (1600, 96, 96, 3)
    assert cache.ids == LABELS.id.tolist()
    assert (cache.labels == LABELS.label.astype(int)).all() and cache.groups is None
    # Kaggle named every patch by the SHA-1 of its pixels, so its ids check content_hash.
    assert cache.content == [item_id[:16] for item_id in cache.ids]
    for k, item_id in enumerate(cache.ids):
        np.testing.assert_array_equal(cache.images[k], tifffile.imread(sample_tiff(k)))
        assert item_id == LABELS.id[k]
    assert not (tmp_path / "c" / ".partial").exists()
    reopened = PackedCache.open(tmp_path / "c", verify="full")
    assert reopened.meta["count"] == 1600 and reopened.meta["excluded"] == 0
    assert isinstance(reopened.images, np.memmap) and not reopened.images.flags.writeable
    assert np.load(tmp_path / "c" / "images.npy", mmap_mode="r").shape == (1600, 96, 96, 3)


def test_cache_next_to_data_reused_until_a_file_or_label_changes(tmp_path, reads):
    root = make_kaggle(tmp_path / "data", 20)
    first = load_patches(root, progress=False)
    assert first.path == root / ".pcam-cache" / "train" and len(reads) == 20
    again = load_patches(root, progress=False)
    assert len(reads) == 20 and again.meta["created"] == first.meta["created"]
    assert load_patches(first.path).ids == first.ids  # a cache dir opens directly

    changed = root / "train" / f"{LABELS.id[3]}.tif"
    shutil.copyfile(sample_tiff(100), changed)
    rebuilt = load_patches(root, progress=False)
    assert len(reads) == 40
    np.testing.assert_array_equal(rebuilt.images[3], tifffile.imread(sample_tiff(100)))

    LABELS[:20].assign(label=1).to_csv(root / "train_labels.csv", index=False)
    assert load_patches(root, progress=False).labels.tolist() == [1] * 20
    assert len(reads) == 60


def test_pcam_cache_dir_overrides_location(tmp_path, monkeypatch):
    root = make_kaggle(tmp_path / "data", 4)
    monkeypatch.setenv("PCAM_CACHE_DIR", str(tmp_path / "elsewhere"))
    cache = load_patches(root, progress=False)
    assert cache.path.parent == tmp_path / "elsewhere" and cache.path.name.startswith("train-")
    assert not (root / ".pcam-cache").exists()


def test_where_a_cache_goes_unless_told(tmp_path, monkeypatch):
    """One decision, in this order: $PCAM_CACHE_DIR, Kaggle's working folder, $PCAM_OUT's cache/
    (not in smoke runs), beside the data, a per-user folder when the data is read-only."""
    source, data = SimpleNamespace(name="kaggle-train:/data"), make_kaggle(tmp_path / "data", 1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    monkeypatch.setenv("PCAM_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("PCAM_CACHE_DIR", raising=False)
    assert default_cache_dir(source, "valid", data) == data / ".pcam-cache" / "train"  # smoke
    monkeypatch.setenv("PCAM_SMOKE", "0")
    assert default_cache_dir(source, "train", data).parent == tmp_path / "out" / "cache"
    monkeypatch.setattr(config, "KAGGLE_INPUT", data)  # its train_labels.csv: on Kaggle
    assert default_cache_dir(source, "train", data).parent == config.KAGGLE_WORKING / ".pcam-cache"
    monkeypatch.setenv("PCAM_CACHE_DIR", str(tmp_path / "set"))
    assert default_cache_dir(source, "train", data).parent == tmp_path / "set"
    monkeypatch.setenv("PCAM_SMOKE", "1")
    monkeypatch.delenv("PCAM_CACHE_DIR")
    monkeypatch.setattr(config, "KAGGLE_INPUT", tmp_path / "nowhere")
    monkeypatch.setattr(os, "access", lambda *_: False)  # a read-only data folder (even as root)
    assert default_cache_dir(source, "train", data).parent == tmp_path / "user" / "pcamlib"


def test_verify_detects_a_corrupt_row_and_pack_repairs_it(tmp_path):
    out = tmp_path / "c"
    pack(SAMPLE_DIR, out, progress=False)
    images = np.load(out / "images.npy", mmap_mode="r+")
    images[250, 10, 10, 0] ^= 0xFF
    images.flush()
    del images
    with pytest.raises(DataError, match=r"row 250 does not match its content hash.*corrupt"):
        PackedCache.open(out, verify="full")
    with pytest.raises(DataError, match="row 250"):  # a small cache is checked whole
        PackedCache.open(out)
    PackedCache.open(out, verify="none")  # shape/count checks only
    with pytest.warns(UserWarning, match="row 250 does not match"):
        pack(SAMPLE_DIR, out, progress=False)  # packs again rather than trust it
    PackedCache.open(out, verify="full")

    with open(out / "images.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match="images.npy: unreadable"):
        PackedCache.open(out)


def test_a_big_cache_is_sampled_and_always_checked_at_both_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "QUICK_ROWS", 10)
    out = tmp_path / "c"
    pack(SAMPLE_DIR, out, progress=False)
    images = np.load(out / "images.npy", mmap_mode="r+")
    images[1599, 0, 0, 1] ^= 0xFF
    images.flush()
    del images
    with pytest.raises(DataError, match="row 1599"):
        PackedCache.open(out)


def test_unfinished_pack_is_not_a_cache_and_another_format_is_packed_again(tmp_path):
    (tmp_path / "c" / ".partial").mkdir(parents=True)
    with pytest.raises(DataError, match="not a finished pcamlib cache"):
        PackedCache.open(tmp_path / "c")
    cache = pack(SAMPLE_DIR, tmp_path / "c", progress=False)
    meta = json.loads((cache.path / "meta.json").read_text())
    (cache.path / "meta.json").write_text(json.dumps({**meta, "format": 3}))
    with pytest.raises(DataError, match="cache format 3, not this pcamlib.s 4"):
        PackedCache.open(cache.path)
    with pytest.warns(UserWarning, match="cache format 3"):
        assert pack(SAMPLE_DIR, tmp_path / "c", progress=False).meta["format"] == 4


KILLABLE_PACK = """
import sys, time
from pcamlib import cache, sources
cache.CHUNK = 100
read = sources.read_image
def slow(path):
    time.sleep(0.002)
    return read(path)
sources.read_image = slow
cache.pack(sys.argv[1], sys.argv[2], workers=2, progress=False)
"""


def test_killed_pack_resumes_and_equals_a_fresh_pack(tmp_path, monkeypatch, reads):
    out, state_path = tmp_path / "resumed", tmp_path / "resumed" / ".partial" / "state.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_PACK, str(SAMPLE_DIR), str(out)], env=env, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if state_path.is_file() and len(json.loads(state_path.read_text())["digests"]) >= 3:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "pack finished before it could be killed"
    assert not (out / "meta.json").exists()
    done = len(json.loads(state_path.read_text())["digests"])
    assert 3 <= done < 16

    monkeypatch.setattr(cache_mod, "CHUNK", 100)
    resumed = pack(SAMPLE_DIR, out, progress=False)
    assert len(reads) == 1600 - 100 * done  # continued, did not restart
    fresh = pack(SAMPLE_DIR, tmp_path / "fresh", progress=False)
    for name in ("images.npy", "index.csv"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    assert resumed.meta["content_digest"] == fresh.meta["content_digest"]
    PackedCache.open(out, verify="full")


def test_resume_redoes_chunks_whose_data_was_lost(tmp_path, monkeypatch, reads):
    monkeypatch.setattr(cache_mod, "CHUNK", 100)
    source = open_source(SAMPLE_DIR)
    original = source.read

    def interrupted(i):
        if i == 450:
            raise KeyboardInterrupt
        return original(i)

    monkeypatch.setattr(source, "read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack(source, tmp_path / "c", workers=1, progress=False)
    state = json.loads((tmp_path / "c" / ".partial" / "state.json").read_text())
    assert len(state["digests"]) == 4
    partial = np.load(tmp_path / "c" / ".partial" / "images.npy", mmap_mode="r+")
    partial[150] = 0  # as if chunk 1 never reached the disk
    partial.flush()
    del partial
    reads.clear()
    monkeypatch.setattr(source, "read", original)
    cache = pack(source, tmp_path / "c", progress=False)
    assert len(reads) == 1600 - 100  # chunk 0 kept; chunk 1 onwards decoded again
    np.testing.assert_array_equal(cache.images[150], tifffile.imread(sample_tiff(150)))
    assert cache.content == [content_hash(image) for image in cache.images]
    PackedCache.open(tmp_path / "c", verify="full")


def make_bad_kaggle(root: Path) -> dict[str, str]:
    """Twelve real patches, eight of them bad in a different way → expected reason."""
    make_kaggle(root, 12)
    ids, folder = LABELS.id[:12].tolist(), root / "train"
    image = tifffile.imread(sample_tiff(0))
    data = sample_tiff(0).read_bytes()
    (folder / f"{ids[0]}.tif").write_bytes(data[:10_000])
    (folder / f"{ids[1]}.tif").write_bytes(os.urandom(len(data)))
    tifffile.imwrite(folder / f"{ids[2]}.tif", image[..., 1])
    tifffile.imwrite(folder / f"{ids[3]}.tif", np.dstack([image, image[..., :1]]))
    tifffile.imwrite(folder / f"{ids[4]}.tif", image[:90, :90])
    (folder / f"{ids[5]}.tif").unlink()
    shutil.copyfile(sample_tiff(50), folder / "unlabelled.tif")
    rows = LABELS[:12].copy()
    rows.loc[6, "label"] = "-1"
    rows = pd.concat([rows, rows.iloc[[7]]])
    rows.to_csv(root / "train_labels.csv", index=False)
    return {
        ids[0]: "truncated TIFF",
        ids[1]: "unreadable image",
        ids[2]: "grayscale",
        ids[3]: "RGBA",
        ids[4]: "size (90, 90, 3)",
        ids[5]: "label row without an image file",
        "unlabelled": "image file without a row",
        ids[6]: "label '-1' is not 0/1",
        ids[7]: "duplicate id",
    }


def test_bad_input_stops_naming_every_item_then_exclude_lists_them(tmp_path, reads):
    root = tmp_path / "data"
    expected = make_bad_kaggle(root)
    with pytest.raises(DataError) as err:
        load_patches(root, progress=False)
    found = {p.id: p.reason for p in err.value.problems}
    assert found.keys() == expected.keys()
    for item_id, reason in expected.items():
        assert reason in found[item_id], (item_id, found[item_id])
        assert item_id in str(err.value)
    assert "on_error='exclude'" in str(err.value)
    assert not (root / ".pcam-cache" / "train" / "meta.json").exists()
    assert len(reads) == 12 - 3  # every listed image was checked once

    cache = load_patches(root, on_error="exclude", progress=False)
    assert len(reads) == 9  # finished from the interrupted pack, nothing decoded again
    good = LABELS.id[8:12].tolist()
    assert cache.ids == good and len(cache.images) == 4
    assert cache.content == [item_id[:16] for item_id in good]  # the kept rows' own hashes
    for image, item_id in zip(cache.images, good, strict=True):
        np.testing.assert_array_equal(image, read_image(root / "train" / f"{item_id}.tif"))
    listed = pd.read_csv(cache.path / "excluded.csv", dtype=str)
    assert set(listed.id) == expected.keys() and list(listed.columns) == ["id", "where", "reason"]
    assert {p.id for p in cache.excluded} == expected.keys()
    PackedCache.open(cache.path, verify="full")

    assert load_patches(root, on_error="exclude", progress=False).ids == good  # reused
    with pytest.raises(DataError) as again:  # asking for strictness again is never silent
        load_patches(root, progress=False)
    assert {p.id for p in again.value.problems} == expected.keys()
    assert len(reads) == 9


def test_hdf5_source_packs_with_groups_and_excludes_a_bad_label(tmp_path):
    x = np.stack([tifffile.imread(sample_tiff(k)) for k in range(30)])
    y = LABELS.label[:30].astype(np.uint8).to_numpy().copy()
    y[7] = 5
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_train_x.h5", "w") as f:
        f.create_dataset("x", data=x, compression="gzip")
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_train_y.h5", "w") as f:
        f.create_dataset("y", data=y.reshape(-1, 1, 1, 1))
    meta = pd.DataFrame({"wsi": [f"s{k // 4}" for k in range(30)]})
    meta.to_csv(tmp_path / "camelyonpatch_level_2_split_train_meta.csv", index=False)
    with pytest.raises(DataError, match="train/7"):
        load_patches(tmp_path, progress=False)
    cache = load_patches(tmp_path, on_error="exclude", progress=False)
    keep = [k for k in range(30) if k != 7]
    np.testing.assert_array_equal(cache.images, x[keep])
    assert cache.ids == [f"train/{k}" for k in keep]
    assert cache.groups.tolist() == [f"s{k // 4}" for k in keep]
    assert cache.labels.tolist() == y[keep].tolist()


def test_content_hash_is_the_pixels_not_the_name(tmp_path):
    """Class folders repeat names across exports (0/patch0000081.jpg): the hash tells them apart."""
    x, y = tifffile.imread(sample_tiff(0)), tifffile.imread(sample_tiff(1))
    folders = {  # b: a's names, other pixels; c: a's pixels, other names
        "a": {"0/patch0000081": x, "1/patch0000082": y},
        "b": {"0/patch0000081": x[::-1], "1/patch0000082": y[:, ::-1]},
        "c": {"0/copy": x, "1/patch0000082": x},
    }
    caches = {}
    for name, files in folders.items():
        for stem, pixels in files.items():
            (tmp_path / name / stem).parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(tmp_path / name / f"{stem}.tif", pixels)
        caches[name] = pack(tmp_path / name, tmp_path / f"cache-{name}", progress=False)
    a, b, c = caches.values()
    assert a.ids == b.ids and a.content == [content_hash(x), content_hash(y)]
    assert not set(a.content) & set(b.content)
    assert c.content == [content_hash(x)] * 2
    index = pd.read_csv(tmp_path / "cache-a" / "index.csv", dtype=str)
    assert list(index.columns) == ["id", "label", "content"]

    index.loc[1, "content"] = "not-a-hash"
    index.to_csv(tmp_path / "cache-a" / "index.csv", index=False)
    with pytest.raises(DataError, match="index.csv: content hashes do not match meta.json"):
        PackedCache.open(tmp_path / "cache-a", verify="none")
    index.loc[1, "content"] = content_hash(x)  # well-formed, but not these pixels
    index.to_csv(tmp_path / "cache-a" / "index.csv", index=False)
    with pytest.raises(DataError, match="content hashes do not match meta.json"):
        PackedCache.open(tmp_path / "cache-a", verify="none")
