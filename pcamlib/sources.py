"""Where patches come from: one reader interface over the layouts users actually have.

* Kaggle competition layout: ``train_labels.csv`` + ``train/<id>.tif`` (and ``test/<id>.tif``
  ordered by ``sample_submission.csv``);
* PCam HDF5 release: ``camelyonpatch_level_2_split_<split>_{x,y}.h5`` (+ optional meta csv);
* class folders: ``DIR/0/*`` and ``DIR/1/*`` (tif, png or jpg);
* TensorFlow Datasets ``tfds:patch_camelyon/<split>`` when tensorflow-datasets is installed.

A source only lists items and decodes one of them; packing (``cache.py``) does the rest.
Every inconsistency is found here, by name, before any decoding starts.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PATCH_SHAPE = (96, 96, 3)
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
H5_PATTERN = "camelyonpatch_level_2_split_{split}_{xy}.h5"


class DataError(ValueError):
    """Bad input data; the message names the file/row and what is wrong."""


@dataclass(frozen=True)
class Problem:
    """One offending item: its id, where it lives and why it cannot be used."""

    id: str
    where: str
    reason: str


def format_problems(problems: list[Problem], header: str, limit: int = 20) -> str:
    lines = [f"{header}: {len(problems)} problem(s)"]
    lines += [f"  {p.id} ({p.where}): {p.reason}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  … and {len(problems) - limit} more")
    return "\n".join(lines)


def check_patch(image: np.ndarray, where: str) -> np.ndarray:
    """Accept only 96×96×3 uint8 RGB: grayscale, RGBA, 16-bit or other sizes are errors."""
    if image.dtype != np.uint8:
        raise DataError(f"{where}: dtype {image.dtype}, expected uint8")
    if image.ndim == 2:
        raise DataError(f"{where}: grayscale image {image.shape}, expected RGB 96×96×3")
    if image.shape != PATCH_SHAPE:
        extra = " (RGBA? drop the alpha channel)" if image.ndim == 3 and image.shape[-1] == 4 else ""
        raise DataError(f"{where}: shape {image.shape}, expected {PATCH_SHAPE}{extra}")
    return image


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """Decode TIFF (tifffile), PNG or JPEG (Pillow) bytes; TensorFlow cannot read TIFF."""
    try:
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            import tifffile

            image = tifffile.imread(io.BytesIO(data))
        else:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                if im.mode not in ("RGB",):
                    raise DataError(f"{where}: image mode {im.mode}, expected RGB")
                image = np.asarray(im)
    except DataError:
        raise
    except Exception as exc:  # corrupt / truncated / unknown format
        raise DataError(f"{where}: unreadable image ({type(exc).__name__}: {exc})") from None
    return check_patch(np.asarray(image), where)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one patch file as 96×96×3 uint8, with an error naming the file when it is not."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not data:
        raise DataError(f"{path}: empty file")
    return decode_image_bytes(data, str(path))


@dataclass
class PatchSource:
    """Items of one split: ids, optional labels and optional slide groups, plus a decoder."""

    name: str
    ids: list[str]
    labels: np.ndarray | None
    groups: np.ndarray | None = None
    paths: list[Path] | None = None
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, index: int) -> np.ndarray:
        assert self.paths is not None
        return read_image(self.paths[index])

    def read_many(self, start: int, stop: int) -> np.ndarray:
        return np.stack([self.read(i) for i in range(start, stop)])

    def fingerprint(self) -> str:
        """Cheap identity of the source: names, sizes, mtimes and labels (no pixel reads)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.name.encode())
        for i, item_id in enumerate(self.ids):
            h.update(item_id.encode())
            if self.paths is not None:
                st = self.paths[i].stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels, dtype=np.int8).tobytes())
        return h.hexdigest()

    def drop(self, problems: list[Problem]) -> PatchSource:
        """A copy without the named items (used only when the caller asked to exclude)."""
        bad = {p.id for p in problems}
        keep = [i for i, item_id in enumerate(self.ids) if item_id not in bad]
        return PatchSource(
            name=self.name,
            ids=[self.ids[i] for i in keep],
            labels=None if self.labels is None else self.labels[keep],
            groups=None if self.groups is None else self.groups[keep],
            paths=None if self.paths is None else [self.paths[i] for i in keep],
            problems=self.problems + problems,
        )


def read_labels(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate ``id,label`` (Kaggle's train_labels.csv); errors name the row."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: labels file not found")
    try:
        frame = pd.read_csv(csv_path, dtype={"id": str}, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{csv_path}: cannot parse CSV ({exc})") from None
    missing = {"id", "label"} - set(frame.columns)
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {sorted(missing)}; found {list(frame.columns)}"
        )
    problems = []
    for row, (item_id, label) in enumerate(zip(frame["id"], frame["label"]), start=2):
        if not str(item_id).strip():
            problems.append(Problem(f"row {row}", str(csv_path), "empty id"))
        if str(label).strip() not in ("0", "1"):
            problems.append(Problem(str(item_id), f"{csv_path}:{row}", f"label {label!r} is not 0/1"))
    dup = frame["id"][frame["id"].duplicated(keep=False)]
    for item_id in sorted(set(dup)):
        rows = [str(r + 2) for r in frame.index[frame["id"] == item_id]]
        problems.append(Problem(item_id, f"{csv_path}:{','.join(rows)}", "duplicate id"))
    if problems:
        raise DataError(format_problems(problems, f"{csv_path}"))
    frame["label"] = frame["label"].astype(str).str.strip().astype(np.int8)
    return frame[["id", "label"] + [c for c in frame.columns if c not in ("id", "label")]]


def _images_in(folder: Path) -> dict[str, Path]:
    """Map id (file stem) → path for every image in ``folder``; non-images are ignored."""
    found: dict[str, Path] = {}
    for entry in os.scandir(folder):
        if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES):
            stem = entry.name.rsplit(".", 1)[0]
            if stem in found:
                raise DataError(f"{folder}: two files share the id {stem!r}")
            found[stem] = Path(entry.path)
    return found


def kaggle_train(root: str | os.PathLike, groups_csv: str | os.PathLike | None = None) -> PatchSource:
    """Kaggle layout: every label row needs a file and every file a label."""
    root = Path(root)
    labels = read_labels(root / "train_labels.csv")
    folder = root / "train"
    if not folder.is_dir():
        raise DataError(f"{folder}: train folder not found next to train_labels.csv")
    files = _images_in(folder)
    problems = [
        Problem(i, str(root / "train_labels.csv"), f"no image file {folder}/{i}.tif")
        for i in labels["id"] if i not in files
    ]
    labelled = set(labels["id"])
    problems += [
        Problem(i, str(p), "image has no row in train_labels.csv")
        for i, p in sorted(files.items()) if i not in labelled
    ]
    labels = labels[labels["id"].isin(files)]
    ids = labels["id"].tolist()
    groups = _read_groups(groups_csv, ids) if groups_csv else None
    return PatchSource(
        name=f"kaggle-train:{root.resolve()}",
        ids=ids,
        labels=labels["label"].to_numpy(np.int8),
        groups=groups,
        paths=[files[i] for i in ids],
        problems=problems,
    )


def kaggle_test(root: str | os.PathLike) -> PatchSource:
    """Kaggle test folder, in ``sample_submission.csv`` order when that file is present."""
    root = Path(root)
    folder = root / "test" if (root / "test").is_dir() else root
    files = _images_in(folder) if folder.is_dir() else {}
    if not files:
        raise DataError(f"{folder}: no test images (*.tif) found")
    sample = root / "sample_submission.csv"
    problems: list[Problem] = []
    if sample.is_file():
        order = pd.read_csv(sample, dtype={"id": str})
        if "id" not in order.columns:
            raise DataError(f"{sample}: no 'id' column")
        ids = order["id"].tolist()
        problems += [Problem(i, str(sample), f"no image file {folder}/{i}.tif") for i in ids if i not in files]
        listed = set(ids)
        problems += [Problem(i, str(p), "test image not in sample_submission.csv")
                     for i, p in sorted(files.items()) if i not in listed]
        ids = [i for i in ids if i in files]
    else:
        ids = sorted(files)
    return PatchSource(name=f"kaggle-test:{folder.resolve()}", ids=ids, labels=None,
                       paths=[files[i] for i in ids], problems=problems)


def class_folders(root: str | os.PathLike) -> PatchSource:
    """``DIR/0/*`` and ``DIR/1/*``: the label is the folder name (e.g. PCam exported as JPEG)."""
    root = Path(root)
    ids, labels, paths = [], [], []
    for label in (0, 1):
        folder = root / str(label)
        if not folder.is_dir():
            raise DataError(f"{folder}: class folder missing (expected {root}/0 and {root}/1)")
        for stem, path in sorted(_images_in(folder).items()):
            ids.append(f"{label}/{stem}")
            labels.append(label)
            paths.append(path)
    if not ids:
        raise DataError(f"{root}: class folders 0/ and 1/ contain no images")
    return PatchSource(name=f"folders:{root.resolve()}", ids=ids,
                       labels=np.asarray(labels, np.int8), paths=paths)


class H5Source(PatchSource):
    """PCam's official HDF5 split: x (N,96,96,3) uint8 and y (N,1,1,1); read in slices."""

    x_path: Path

    def read(self, index: int) -> np.ndarray:
        return self.read_many(index, index + 1)[0]

    def read_many(self, start: int, stop: int) -> np.ndarray:
        import h5py

        with h5py.File(self.x_path, "r") as f:
            return np.asarray(f["x"][start:stop], dtype=np.uint8)

    def fingerprint(self) -> str:
        st = self.x_path.stat()
        return hashlib.blake2b(
            f"{self.name}:{st.st_size}:{st.st_mtime_ns}:{len(self)}".encode(), digest_size=16
        ).hexdigest()


def pcam_h5(root: str | os.PathLike, split: str = "train") -> PatchSource:
    """PCam HDF5 files of one split; slide groups come from the meta csv when it is there."""
    import h5py

    root = Path(root)
    x_path = root / H5_PATTERN.format(split=split, xy="x")
    y_path = root / H5_PATTERN.format(split=split, xy="y")
    if not x_path.is_file():
        raise DataError(f"{x_path}: PCam HDF5 file not found")
    try:
        with h5py.File(x_path, "r") as f:
            shape, dtype = f["x"].shape, f["x"].dtype
    except Exception as exc:
        raise DataError(f"{x_path}: unreadable HDF5 ({exc})") from None
    if tuple(shape[1:]) != PATCH_SHAPE or dtype != np.uint8:
        raise DataError(f"{x_path}: dataset 'x' is {shape} {dtype}, expected (N, 96, 96, 3) uint8")
    labels = None
    if y_path.is_file():
        with h5py.File(y_path, "r") as f:
            y = np.asarray(f["y"]).reshape(-1)
        if len(y) != shape[0]:
            raise DataError(f"{y_path}: {len(y)} labels for {shape[0]} images in {x_path.name}")
        bad = np.flatnonzero(~np.isin(y, (0, 1)))
        if len(bad):
            raise DataError(f"{y_path}: labels at rows {bad[:10].tolist()} are not 0/1")
        labels = y.astype(np.int8)
    meta = root / f"camelyonpatch_level_2_split_{split}_meta.csv"
    groups = None
    if meta.is_file():
        frame = pd.read_csv(meta)
        if "wsi" in frame.columns and len(frame) == shape[0]:
            groups = frame["wsi"].astype(str).to_numpy()
    source = H5Source(name=f"pcam-h5:{x_path.resolve()}", ids=[f"{split}/{i}" for i in range(shape[0])],
                      labels=labels, groups=groups)
    source.x_path = x_path
    return source


def _read_groups(csv_path: str | os.PathLike, ids: list[str]) -> np.ndarray:
    """Patch→slide map (``id,wsi`` csv, e.g. the community patch_id_wsi file): every id needs one."""
    csv_path = Path(csv_path)
    frame = pd.read_csv(csv_path, dtype=str)
    id_col = "id" if "id" in frame.columns else frame.columns[0]
    group_col = next((c for c in ("wsi", "slide", "group") if c in frame.columns), None)
    if group_col is None:
        raise DataError(f"{csv_path}: needs a slide column named wsi, slide or group")
    mapping = dict(zip(frame[id_col], frame[group_col]))
    missing = [i for i in ids if i not in mapping]
    if missing:
        raise DataError(f"{csv_path}: no slide for {len(missing)} id(s), e.g. {missing[:5]}")
    return np.asarray([mapping[i] for i in ids])


def open_source(spec: str | os.PathLike, split: str = "train", groups_csv=None) -> PatchSource:
    """Recognise the layout at ``spec`` and return its ``split`` ('train', 'valid' or 'test')."""
    text = str(spec)
    if text.startswith("tfds:"):
        from .tfds_source import tfds_source

        return tfds_source(text, split)
    root = Path(spec)
    if not root.exists():
        raise DataError(f"{root}: data path does not exist")
    if (root / H5_PATTERN.format(split=split, xy="x")).is_file():
        return pcam_h5(root, split)
    if (root / "train_labels.csv").is_file() or (root / "sample_submission.csv").is_file():
        return kaggle_test(root) if split == "test" else kaggle_train(root, groups_csv)
    if (root / "0").is_dir() and (root / "1").is_dir():
        return class_folders(root)
    if split != "train" and (root / split / "0").is_dir():
        return class_folders(root / split)
    if (root / "train" / "0").is_dir() and split == "train":
        return class_folders(root / "train")
    if split == "test" and any(p.suffix.lower() in (".tif", ".tiff") for p in root.iterdir()):
        return kaggle_test(root)
    raise DataError(
        f"{root}: not a known layout. Expected one of: train_labels.csv + train/ (Kaggle), "
        f"camelyonpatch_level_2_split_{split}_x.h5 (PCam HDF5), 0/ and 1/ class folders, "
        "or a folder of test .tif files"
    )
