"""Where patches come from: one reader interface over the layouts users actually have.

Kaggle (``train_labels.csv`` + ``train/<id>.tif``, ``test/`` in ``sample_submission.csv``
order), the PCam HDF5 release (+ optional meta csv giving each patch's slide; its three
splits as one source for training), class folders ``DIR/{0,1}/*`` or ``DIR/<split>/{0,1}/*``.
A source lists items and decodes one; ``cache.py`` packs them. Listing problems are collected
by name in ``PatchSource.problems``; a bad image raises a ``DataError`` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from .checks import few, not01

PATCH_SHAPE = (96, 96, 3)
PATCH_BYTES = 96 * 96 * 3
SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
H5_PATTERN = "camelyonpatch_level_2_split_{split}_{xy}.h5"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_PIL_MODES = {
    "L": "grayscale",
    "LA": "grayscale with alpha",
    "RGBA": "RGBA (has an alpha channel)",
    "P": "palette",
    "CMYK": "CMYK",
    "1": "black-and-white",
    "I;16": "16-bit grayscale",
}


class DataError(ValueError):
    """Bad input data: the message names the file/row and what is wrong; ``problems`` lists
    every offending item when there are several."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


@dataclass(frozen=True)
class Problem:
    """One offending item: its id, where it lives and why it cannot be used."""

    id: str
    where: str
    reason: str


def format_problems(problems: list[Problem], header: str, limit: int = 50) -> str:
    """``header: N bad item(s)`` then one indented line per item, the first ``limit`` of them."""
    listed = " (all in DataError.problems)" if len(problems) > limit else ""
    lines = few(problems, limit, fmt=lambda p: f"{p.id} ({p.where}): {p.reason}", sep="\n  ")
    return f"{header}: {len(problems)} bad item(s){listed}\n  {lines}"


def check_patch(image: np.ndarray, where: str) -> np.ndarray:
    """Accept only 96×96×3 uint8 RGB: grayscale, RGBA, 16-bit or other sizes are errors."""
    if image.dtype != np.uint8:
        raise DataError(f"{where}: dtype {image.dtype}, expected uint8 RGB")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1):
        raise DataError(f"{where}: grayscale image {image.shape}, expected RGB 96×96×3")
    if image.ndim == 3 and image.shape[-1] == 4:
        raise DataError(f"{where}: RGBA image {image.shape}, expected RGB 96×96×3")
    if image.shape != PATCH_SHAPE:
        raise DataError(f"{where}: size {image.shape}, expected {PATCH_SHAPE}")
    return image


def _plain_tiff(data: bytes, where: str) -> np.ndarray | None:
    """Pixels of an uncompressed single-page 96×96 8-bit RGB TIFF, the way Kaggle stores patches.

    Reads only the tags that matter, ~10× faster than tifffile's general reader; returns None
    for any other TIFF so that tifffile decodes (or rejects) it.
    """
    bo = "<" if data[:2] == b"II" else ">"
    try:  # a header or IFD cut short raises struct.error: let tifffile explain
        (ifd,) = struct.unpack_from(bo + "I", data, 4)
        (n,) = struct.unpack_from(bo + "H", data, ifd)
        if struct.unpack_from(bo + "I", data, ifd + 2 + 12 * n)[0] != 0:
            return None  # several pages
        tags = {}
        for k in range(n):
            tag, kind, count, raw = struct.unpack_from(bo + "HHI4s", data, ifd + 2 + 12 * k)
            if kind not in (3, 4) or count > 1024:  # only SHORT / LONG tags matter here
                continue
            fmt, size = ("H", 2) if kind == 3 else ("I", 4)
            inline = count * size <= 4
            offset = 0 if inline else struct.unpack_from(bo + "I", raw)[0]
            tags[tag] = struct.unpack_from(f"{bo}{count}{fmt}", raw if inline else data, offset)
    except struct.error:
        return None
    plain = (
        tags.get(256) == (96,)
        and tags.get(257) == (96,)
        and tags.get(258) in ((8, 8, 8), (8,))
        and tags.get(259, (1,)) == (1,)  # no compression
        and tags.get(262) == (2,)  # RGB
        and tags.get(277) == (3,)
        and tags.get(284, (1,)) == (1,)  # interleaved
        and 338 not in tags  # no extra (alpha) samples
        and tags.get(339, (1,)) in ((1,), (1, 1, 1))  # unsigned integers
        and 273 in tags
        and len(tags[273]) == len(tags.get(279, ()))
    )
    if not plain or sum(tags[279]) != PATCH_BYTES:
        return None
    strips = list(zip(tags[273], tags[279], strict=True))
    last = max(o + c for o, c in strips)
    if last > len(data):
        raise DataError(f"{where}: truncated TIFF ({len(data)} bytes, image data ends at {last})")
    if len(strips) == 1:
        pixels = np.frombuffer(data, np.uint8, PATCH_BYTES, strips[0][0])
    else:
        pixels = np.frombuffer(b"".join(data[o : o + c] for o, c in strips), np.uint8)
    return pixels.reshape(PATCH_SHAPE)


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """Decode TIFF (own fast path, else tifffile), PNG or JPEG (Pillow) into 96×96×3 uint8."""
    try:
        if data[:4] in _TIFF_MAGIC:
            image = _plain_tiff(data, where)
            if image is None:
                import tifffile

                image = tifffile.imread(io.BytesIO(data))
                if image.ndim < 2 or image.size == 0:
                    raise DataError(f"{where}: unreadable TIFF (no image data)")
        else:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                if im.mode != "RGB":
                    kind = _PIL_MODES.get(im.mode, f"mode {im.mode}")
                    raise DataError(f"{where}: {kind} image, expected RGB")
                image = np.asarray(im)
    except DataError:
        raise
    except Exception as exc:  # corrupt / truncated / unknown format
        raise DataError(f"{where}: unreadable image ({type(exc).__name__}: {exc})") from None
    return check_patch(image, where)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one patch file as 96×96×3 uint8, with an error naming the file when it is not."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not data:
        raise DataError(f"{path}: empty file")
    return decode_image_bytes(data, str(path))


@dataclass
class PatchSource:
    """Items of one split: ids, optional labels and slide groups, and how to decode each."""

    name: str
    ids: list[str]
    labels: np.ndarray | None
    groups: np.ndarray | None = None
    paths: list[Path] | None = None
    problems: list[Problem] = field(default_factory=list)
    # True when reading consecutive rows in one call beats per-item reads (HDF5, TFDS).
    block_reads: ClassVar[bool] = False

    def __len__(self) -> int:
        return len(self.ids)

    def where(self, index: int) -> str:
        """Where item ``index`` lives, for messages."""
        return str(self.paths[index]) if self.paths is not None else f"{self.name}[{index}]"

    def read(self, index: int) -> np.ndarray:
        if self.paths is None:
            return self.read_many(index, index + 1)[0]
        return read_image(self.paths[index])

    def read_many(self, start: int, stop: int) -> np.ndarray:
        return np.stack([self.read(i) for i in range(start, stop)])

    def files(self) -> list[Path]:
        """Files whose size and mtime identify this source's content."""
        return self.paths or []

    def fingerprint(self) -> str:
        """Cheap identity: ids, labels, groups, listing problems, file sizes and mtimes."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.name}\n{len(self.ids)}\n".encode())
        h.update("\n".join(self.ids).encode())
        for extra in (self.labels, self.groups):
            h.update(b"-" if extra is None else "\n".join(map(str, extra.tolist())).encode())
        h.update(repr([(p.id, p.reason) for p in self.problems]).encode())
        for path in self.files():
            try:
                st = os.stat(path)
            except OSError as exc:
                raise DataError(f"{path}: cannot stat ({exc.strerror})") from None
            h.update(struct.pack("<qq", st.st_size, st.st_mtime_ns))
        return h.hexdigest()


def read_labels(csv_path: str | os.PathLike) -> tuple[pd.DataFrame, list[Problem]]:
    """Kaggle's ``id,label`` csv → (valid rows, with their csv line in ``row``; bad rows).

    Rows with an empty id, a label other than 0/1, or an id listed twice are left out.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: labels file not found")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{csv_path}: cannot parse CSV ({exc})") from None
    missing = {"id", "label"} - set(frame.columns)
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {sorted(missing)}; found {list(frame.columns)}"
        )
    frame["id"] = frame["id"].str.strip()
    frame["row"] = np.arange(2, len(frame) + 2)  # csv line numbers (line 1 is the header)
    bad = (frame["id"] == "").to_numpy() | not01(pd.to_numeric(frame["label"], errors="coerce"))
    problems = [
        Problem(f"line {row}", str(csv_path), "empty id")
        if not item_id
        else Problem(item_id, f"{csv_path}:{row}", f"label {label!r} is not 0/1")
        for item_id, label, row in frame[bad][["id", "label", "row"]].itertuples(index=False)
    ]
    dup = frame["id"].duplicated(keep=False) & ~bad
    for item_id, rows in frame[dup].groupby("id", sort=False)["row"]:
        lines = ",".join(map(str, rows))
        problems.append(Problem(item_id, f"{csv_path}:{lines}", "duplicate id (listed twice)"))
    frame = frame[~(bad | dup)].copy()
    frame["label"] = frame["label"].astype(float).astype(np.int8)
    return frame.reset_index(drop=True), problems


def _images_in(folder: Path) -> tuple[dict[str, Path], list[Problem]]:
    """Map id (file stem) → path of the images in ``folder``; one id for two files is a problem."""
    found: dict[str, Path] = {}
    clashes: dict[str, list[str]] = {}
    for entry in os.scandir(folder):
        if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
            stem = entry.name.rsplit(".", 1)[0]
            if stem in found:
                clashes.setdefault(stem, [found[stem].name]).append(entry.name)
            found[stem] = Path(entry.path)
    problems = [
        Problem(stem, str(folder), f"duplicate id: files {', '.join(sorted(names))}")
        for stem, names in sorted(clashes.items())
    ]
    for stem in clashes:
        del found[stem]
    return found, problems


def _match(problems: list[Problem], listed, files: dict, no_file, unlisted: str) -> None:
    """Add a problem for each listed ``(id, where)`` without a file and each file not listed,
    except for ids that already have one."""
    reported = {p.id for p in problems}
    problems += [
        Problem(i, where, no_file(i)) for i, where in listed if i not in files and i not in reported
    ]
    names = {i for i, _ in listed} | reported
    problems += [Problem(i, str(p), unlisted) for i, p in sorted(files.items()) if i not in names]


def kaggle_train(
    root: str | os.PathLike, groups_csv: str | os.PathLike | None = None
) -> PatchSource:
    """Kaggle layout: every label row needs a file and every file a label."""
    root = Path(root)
    csv_path = root / "train_labels.csv"
    labels, problems = read_labels(csv_path)
    folder = root / "train"
    if not folder.is_dir():
        raise DataError(f"{folder}: train folder not found next to train_labels.csv")
    files, file_problems = _images_in(folder)
    problems += file_problems
    rows = [(i, f"{csv_path}:{row}") for i, row in zip(labels["id"], labels["row"], strict=True)]
    _match(
        problems,
        rows,
        files,
        lambda i: f"label row without an image file (no {folder}/{i}.tif)",
        "image file without a row in train_labels.csv",
    )
    labels = labels[labels["id"].isin(files.keys())]
    ids = labels["id"].tolist()
    return PatchSource(
        name=f"kaggle-train:{root.resolve()}",
        ids=ids,
        labels=labels["label"].to_numpy(np.int8),
        groups=_read_groups(groups_csv, ids) if groups_csv else None,
        paths=[files[i] for i in ids],
        problems=problems,
    )


def kaggle_test(root: str | os.PathLike) -> PatchSource:
    """Kaggle test folder, in ``sample_submission.csv`` order when that file is present."""
    root = Path(root)
    folder = root / "test" if (root / "test").is_dir() else root
    files, problems = _images_in(folder) if folder.is_dir() else ({}, [])
    if not files and not problems:
        raise DataError(f"{folder}: no test images (*.tif) found")
    sample = root / "sample_submission.csv"
    ids = sorted(files)
    if sample.is_file():
        order = pd.read_csv(sample, dtype=str, keep_default_na=False)
        if "id" not in order.columns:
            raise DataError(f"{sample}: no 'id' column")
        ids = order["id"].str.strip()
        for item_id in sorted(set(ids[ids.duplicated()])):
            problems.append(Problem(item_id, str(sample), "duplicate id (listed twice)"))
        _match(
            problems,
            [(i, str(sample)) for i in ids],
            files,
            lambda i: f"no image file {folder}/{i}.tif",
            "test image not in sample_submission.csv",
        )
        bad = {p.id for p in problems}
        ids = [i for i in ids if i not in bad]
    return PatchSource(
        name=f"kaggle-test:{folder.resolve()}",
        ids=ids,
        labels=None,
        paths=[files[i] for i in ids],
        problems=problems,
    )


def class_folders(root: str | os.PathLike) -> PatchSource:
    """``DIR/0/*`` and ``DIR/1/*``: the label is the folder name (e.g. PCam exported as JPEG)."""
    root = Path(root)
    listed, problems = {}, []
    for label in (0, 1):
        folder = root / str(label)
        if not folder.is_dir():
            raise DataError(f"{folder}: class folder missing (expected {root}/0 and {root}/1)")
        listed[label], found = _images_in(folder)
        problems += found
    both = sorted(set(listed[0]) & set(listed[1]))
    problems += [
        Problem(s, str(root), f"in both class folders: {listed[0][s].name} has label 0 and 1")
        for s in both
    ]
    ids, labels, paths = [], [], []
    for label in (0, 1):
        for stem, path in sorted(listed[label].items()):
            if stem not in both:
                ids.append(f"{label}/{stem}")
                labels.append(label)
                paths.append(path)
    if not ids and not problems:
        raise DataError(f"{root}: class folders 0/ and 1/ contain no images")
    return PatchSource(
        name=f"folders:{root.resolve()}",
        ids=ids,
        labels=np.asarray(labels, np.int8),
        paths=paths,
        problems=problems,
    )


@dataclass
class H5Source(PatchSource):
    """PCam's official HDF5 split: x (N,96,96,3) uint8 and y (N,1,1,1), read in slices."""

    x_path: Path | None = None
    y_path: Path | None = None
    block_reads: ClassVar[bool] = True

    def where(self, index: int) -> str:
        return f"{self.x_path}[{index}]"

    def read_many(self, start: int, stop: int) -> np.ndarray:
        import h5py

        with h5py.File(self.x_path, "r") as f:
            return np.asarray(f["x"][start:stop], dtype=np.uint8)

    def files(self) -> list[Path]:
        return [p for p in (self.x_path, self.y_path) if p is not None and p.is_file()]


def _read_h5(path: Path, read):
    """``read(h5py.File)``, with an error naming ``path`` when it is not readable HDF5."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return read(f)
    except Exception as exc:
        raise DataError(f"{path}: unreadable HDF5 ({type(exc).__name__}: {exc})") from None


def pcam_h5(root: str | os.PathLike, split: str = "train") -> H5Source:
    """PCam HDF5 files of one split; slide groups come from the meta csv when it is there."""
    root = Path(root)
    x_path = root / H5_PATTERN.format(split=split, xy="x")
    y_path = root / H5_PATTERN.format(split=split, xy="y")
    if not x_path.is_file():
        raise DataError(f"{x_path}: PCam HDF5 file not found")
    shape, dtype = _read_h5(x_path, lambda f: (f["x"].shape, f["x"].dtype))
    if tuple(shape[1:]) != PATCH_SHAPE or dtype != np.uint8:
        raise DataError(f"{x_path}: dataset 'x' is {shape} {dtype}, expected (N, 96, 96, 3) uint8")
    ids = [f"{split}/{i}" for i in range(shape[0])]
    labels, problems = None, []
    if y_path.is_file():
        y = _read_h5(y_path, lambda f: np.asarray(f["y"]).reshape(-1))
        if len(y) != shape[0]:
            raise DataError(f"{y_path}: {len(y)} labels for {shape[0]} images in {x_path.name}")
        bad = not01(y)
        problems = [
            Problem(ids[i], f"{y_path}[{i}]", f"label {y[i].item()!r} is not 0/1")
            for i in np.flatnonzero(bad)
        ]
        labels = np.where(bad, -1, y).astype(np.int8)
    groups = None
    meta = root / f"camelyonpatch_level_2_split_{split}_meta.csv"
    if meta.is_file():
        frame = pd.read_csv(meta)
        if "wsi" in frame.columns:
            if len(frame) != shape[0]:
                raise DataError(f"{meta}: {len(frame)} rows for {shape[0]} images")
            groups = frame["wsi"].astype(str).to_numpy()
    return H5Source(
        name=f"pcam-h5:{x_path.resolve()}",
        ids=ids,
        labels=labels,
        groups=groups,
        problems=problems,
        x_path=x_path,
        y_path=y_path if y_path.is_file() else None,
    )


PCAM_SPLITS = "pcam-splits"  # the name (before ':') of the source of PCam's three splits


def is_pcam_layout(root: str | os.PathLike) -> bool:
    """Does ``root`` hold PCam's six HDF5 files (x and y of train, valid and test)?"""
    root = Path(root)
    return all(
        (root / H5_PATTERN.format(split=split, xy=xy)).is_file() for split in SPLITS for xy in "xy"
    )


@dataclass
class PcamSplits(PatchSource):
    """PCam's train, valid and test HDF5 splits as one labelled source, in that order.

    Ids are those of :func:`pcam_h5` (``train/7``, ``valid/7``, ``test/7``), so a row's PCam
    split is in its id; reads go to each split's file in slices, never a split whole.
    """

    splits: list[H5Source] = field(default_factory=list)
    block_reads: ClassVar[bool] = True

    def _starts(self) -> list[int]:
        return np.cumsum([0] + [len(s) for s in self.splits]).tolist()

    def where(self, index: int) -> str:
        starts = self._starts()
        k = int(np.searchsorted(starts, index, side="right")) - 1
        return self.splits[k].where(index - starts[k])

    def read_many(self, start: int, stop: int) -> np.ndarray:
        blocks = []
        for split, lo in zip(self.splits, self._starts(), strict=False):
            a, b = max(start, lo), min(stop, lo + len(split))
            if a < b:
                blocks.append(split.read_many(a - lo, b - lo))
        return np.concatenate(blocks)

    def files(self) -> list[Path]:
        return [path for split in self.splits for path in split.files()]


def pcam_splits(root: str | os.PathLike) -> PcamSplits:
    """All of PCam's labelled patches: its train, valid and test splits (slide groups when
    every meta csv is there). What ``split="pcam"`` trains, chooses and reports on."""
    root = Path(root)
    splits = [pcam_h5(root, split) for split in SPLITS]
    for split in splits:
        if split.labels is None:
            raise DataError(f"{split.x_path}: no labels (its _y.h5 file is missing)")
    groups = None
    if all(split.groups is not None for split in splits):
        groups = np.concatenate([split.groups for split in splits])
    return PcamSplits(
        name=f"{PCAM_SPLITS}:{root.resolve()}",
        ids=[i for split in splits for i in split.ids],
        labels=np.concatenate([split.labels for split in splits]),
        groups=groups,
        problems=[p for split in splits for p in split.problems],
        splits=splits,
    )


def _read_groups(csv_path: str | os.PathLike, ids: list[str]) -> np.ndarray:
    """Patch→slide map (``id,wsi`` csv, e.g. the community patch_id_wsi file) for ``ids``."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: slide map not found")
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    id_col = "id" if "id" in frame.columns else frame.columns[0]
    group_col = next((c for c in ("wsi", "slide", "group") if c in frame.columns), None)
    if group_col is None:
        raise DataError(f"{csv_path}: needs a slide column named wsi, slide or group")
    mapping = dict(zip(frame[id_col], frame[group_col], strict=True))
    missing = [i for i in ids if i not in mapping]
    if missing:
        raise DataError(f"{csv_path}: no slide for {len(missing)} id(s), e.g. {missing[:5]}")
    return np.asarray([mapping[i] for i in ids])


def open_source(
    spec: str | os.PathLike,
    split: str = "train",
    groups_csv: str | os.PathLike | None = None,
) -> PatchSource:
    """Recognise the layout at ``spec`` and return its ``split`` ('train', 'valid' or 'test').

    On PCam's HDF5 layout with all three splits, 'train' is every labelled patch there
    (:func:`pcam_splits`: ids ``train/N``, ``valid/N``, ``test/N``), the data runs are made
    from; 'valid' and 'test' are those splits alone.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(spec)
    if not root.exists():
        raise DataError(f"{root}: data path does not exist")
    if split == "train" and is_pcam_layout(root):
        return pcam_splits(root)
    if (root / H5_PATTERN.format(split=split, xy="x")).is_file():
        return pcam_h5(root, split)
    if (root / "train_labels.csv").is_file() or (root / "sample_submission.csv").is_file():
        return kaggle_test(root) if split == "test" else kaggle_train(root, groups_csv)
    if (root / split / "0").is_dir():
        return class_folders(root / split)
    if (root / "0").is_dir() and (root / "1").is_dir():
        return class_folders(root)
    if split == "test" and any(p.suffix.lower() in (".tif", ".tiff") for p in root.iterdir()):
        return kaggle_test(root)
    raise DataError(
        f"{root}: not a known layout. Expected one of: train_labels.csv + train/ (Kaggle), "
        f"camelyonpatch_level_2_split_{split}_x.h5 (PCam HDF5), 0/ and 1/ class folders "
        f"(or {split}/0 and {split}/1), or a folder of test .tif files"
    )
