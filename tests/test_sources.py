"""Sources on real-format files: the embedded Kaggle sample and files made from it here."""

import io
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from pcamlib.config import SAMPLE_DIR
from pcamlib.sources import (
    DataError,
    _plain_tiff,
    class_folders,
    decode_image_bytes,
    open_source,
    read_image,
)

LABELS = pd.read_csv(SAMPLE_DIR / "train_labels.csv", dtype=str)


def real_tiff(k: int = 0) -> Path:
    return SAMPLE_DIR / "train" / f"{LABELS.id[k]}.tif"


def make_kaggle(root: Path, n: int = 8) -> Path:
    """A Kaggle-layout copy of the first ``n`` sample patches."""
    (root / "train").mkdir(parents=True)
    for item_id in LABELS.id[:n]:
        shutil.copyfile(SAMPLE_DIR / "train" / f"{item_id}.tif", root / "train" / f"{item_id}.tif")
    LABELS[:n].to_csv(root / "train_labels.csv", index=False)
    return root


def reasons(source) -> dict[str, str]:
    return {p.id: p.reason for p in source.problems}


def test_fast_tiff_reader_matches_tifffile_on_every_sample_patch():
    files = sorted(SAMPLE_DIR.glob("t*/*.tif"))  # train/ and test/
    assert len(files) == 1629
    for path in files:
        data = path.read_bytes()
        fast = _plain_tiff(data, str(path))
        assert fast is not None, path
        np.testing.assert_array_equal(fast, tifffile.imread(path))


def test_other_tiff_flavours_fall_back_to_tifffile():
    image = tifffile.imread(real_tiff())
    for kwargs in ({"compression": "zlib"}, {"rowsperstrip": 10}, {"byteorder": ">"}):
        buf = io.BytesIO()
        tifffile.imwrite(buf, image, **kwargs)
        np.testing.assert_array_equal(decode_image_bytes(buf.getvalue(), "x.tif"), image)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    np.testing.assert_array_equal(decode_image_bytes(buf.getvalue(), "x.png"), image)


def _bad_files(folder: Path) -> dict[str, str]:
    """One real-format file per way an image can be bad → the reason pcamlib must give."""
    image = tifffile.imread(real_tiff())
    data = real_tiff().read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.tif").write_bytes(data[:8] + bytes(200))
    (folder / "garbage.tif").write_bytes(b"this is not an image")
    (folder / "empty.tif").write_bytes(b"")
    tifffile.imwrite(folder / "gray.tif", image[..., 0])
    tifffile.imwrite(folder / "rgba.tif", np.dstack([image, np.full((96, 96), 255, np.uint8)]))
    tifffile.imwrite(folder / "small.tif", image[:64, :64])
    tifffile.imwrite(folder / "deep.tif", image.astype(np.uint16) * 256)
    Image.fromarray(image[..., 0]).save(folder / "gray.jpg")
    Image.fromarray(image).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(image).resize((50, 50)).save(folder / "small.png")
    jpeg = io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[:400])
    return {
        "truncated.tif": "truncated",
        "corrupt.tif": "unreadable",
        "garbage.tif": "unreadable",
        "empty.tif": "empty file",
        "gray.tif": "grayscale",
        "rgba.tif": "RGBA",
        "small.tif": "size (64, 64, 3)",
        "deep.tif": "dtype uint16",
        "gray.jpg": "grayscale",
        "rgba.png": "RGBA",
        "small.png": "size (50, 50, 3)",
        "truncated.jpg": "unreadable",
    }


def test_each_bad_image_is_named_with_its_reason(tmp_path):
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(DataError) as err:
            read_image(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: "), err.value
        assert reason in str(err.value), (name, err.value)


def test_kaggle_train_and_test_layouts():
    train = open_source(SAMPLE_DIR, "train")
    assert len(train) == 1600 and train.problems == []
    assert train.ids == LABELS.id.tolist()
    assert (train.labels == LABELS.label.astype(int)).all() and train.labels.sum() == 800
    np.testing.assert_array_equal(train.read(3), tifffile.imread(real_tiff(3)))
    test = open_source(SAMPLE_DIR, "test")
    order = pd.read_csv(SAMPLE_DIR / "sample_submission.csv", dtype=str).id.tolist()
    assert test.ids == order and test.labels is None and test.problems == []


def test_listing_problems_are_each_named(tmp_path):
    root = make_kaggle(tmp_path / "data", n=8)
    ids = LABELS.id[:8].tolist()
    (root / "train" / f"{ids[0]}.tif").unlink()  # label row without a file
    shutil.copyfile(real_tiff(20), root / "train" / "stray.tif")  # file without a label
    shutil.copyfile(real_tiff(21), root / "train" / f"{ids[1]}.png")  # two files, one id
    rows = LABELS[:8].copy()
    rows.loc[2, "label"] = "2"
    rows.loc[3, "label"] = ""
    rows = pd.concat([rows, rows.iloc[[4]].assign(label="0")])  # id listed twice
    rows.to_csv(root / "train_labels.csv", index=False)

    source = open_source(root, "train")
    found = reasons(source)
    assert "label row without an image file" in found[ids[0]]
    assert "duplicate id: files" in found[ids[1]] and ".png" in found[ids[1]]
    assert "'2' is not 0/1" in found[ids[2]]
    assert "'' is not 0/1" in found[ids[3]]
    assert "duplicate id" in found[ids[4]]
    assert "without a row in train_labels.csv" in found["stray"]
    assert len(found) == 6
    assert source.ids == ids[5:]  # only the consistent items are listed
    assert len(source.paths) == len(source.labels) == 3


def test_kaggle_slide_map_gives_groups_and_names_what_is_missing(tmp_path):
    root = make_kaggle(tmp_path / "data", n=4)
    ids = LABELS.id[:4].tolist()
    slides = pd.DataFrame({"id": ids + [ids[0]], "wsi": ["a", "b", "c", "d", "e"]})
    slides.to_csv(tmp_path / "slides.csv", index=False)  # a repeated id: its last row counts
    source = open_source(root, "train", groups_csv=tmp_path / "slides.csv")
    assert source.groups.tolist() == ["e", "b", "c", "d"]
    slides[1:4].rename(columns={"wsi": "slide"}).to_csv(tmp_path / "some.csv", index=False)
    with pytest.raises(DataError, match=r"some.csv: no slide for 1 id\(s\), e.g. \['"):
        open_source(root, "train", groups_csv=tmp_path / "some.csv")
    slides[["id"]].assign(x=1).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="bad.csv: needs a slide column named wsi, slide or group"):
        open_source(root, "train", groups_csv=tmp_path / "bad.csv")


def test_class_folders_and_split_subfolders(tmp_path):
    image = tifffile.imread(real_tiff(0))
    for split in ("train", "valid"):
        for label in (0, 1):
            folder = tmp_path / split / str(label)
            folder.mkdir(parents=True)
            Image.fromarray(image).save(folder / f"{split}{label}.png")
            Image.fromarray(image).save(folder / f"{split}{label}b.jpg", quality=95)
            shutil.copyfile(real_tiff(label), folder / f"{split}{label}c.tif")
    source = open_source(tmp_path, "valid")
    assert source.ids == [f"{y}/valid{y}{s}" for y in (0, 1) for s in ("", "b", "c")]
    assert source.labels.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(source.read(0), image)
    assert np.abs(source.read(1).astype(int) - image).mean() < 3  # JPEG, nearly lossless
    shutil.copyfile(real_tiff(5), tmp_path / "train" / "1" / "train0.tif")  # in 0/ and 1/
    assert "in both class folders" in reasons(class_folders(tmp_path / "train"))["train0"]


def write_h5(root: Path, n: int = 40, y=None, wsi=True) -> np.ndarray:
    """PCam's official HDF5 layout (gzip, as released) filled with real sample patches."""
    x = np.stack([tifffile.imread(real_tiff(k)) for k in range(n)])
    y = LABELS.label[:n].astype(np.uint8).to_numpy() if y is None else np.asarray(y)
    with h5py.File(root / "camelyonpatch_level_2_split_train_x.h5", "w") as f:
        f.create_dataset("x", data=x, compression="gzip", chunks=(8, 96, 96, 3))
    with h5py.File(root / "camelyonpatch_level_2_split_train_y.h5", "w") as f:
        f.create_dataset("y", data=y.reshape(-1, 1, 1, 1))
    if wsi:
        meta = pd.DataFrame({"wsi": [f"slide_{k % 5}" for k in range(n)], "tumor_patch": y})
        meta.to_csv(root / "camelyonpatch_level_2_split_train_meta.csv", index=False)
    return x


def test_pcam_hdf5_with_slide_groups(tmp_path):
    x = write_h5(tmp_path)
    source = open_source(tmp_path, "train")
    assert source.block_reads and len(source) == 40
    np.testing.assert_array_equal(source.read_many(5, 17), x[5:17])
    np.testing.assert_array_equal(source.read(39), x[39])
    assert source.groups[:6].tolist() == ["slide_0", "slide_1", "slide_2", "slide_3", "slide_4"] + [
        "slide_0"
    ]
    assert (source.labels == LABELS.label[:40].astype(int)).all()


def test_hdf5_labels_that_are_not_binary_are_named(tmp_path):
    y = LABELS.label[:40].astype(np.uint8).to_numpy().copy()
    y[7] = 3
    write_h5(tmp_path, y=y, wsi=False)
    source = open_source(tmp_path, "train")
    assert reasons(source) == {"train/7": "label 3 is not 0/1"}
    assert source.groups is None


def test_unknown_layout_and_bad_split(tmp_path):
    with pytest.raises(DataError, match="not a known layout"):
        open_source(tmp_path, "train")
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "nope", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        open_source(SAMPLE_DIR, "validation")
