"""Where patches come from: Kaggle (``train_labels.csv`` + ``train/``, ``test/``), PCam's HDF5
release, class folders ``DIR/{0,1}/*`` or ``DIR/<split>/{0,1}/*``. Listing problems go to
``PatchSource.problems``; a bad image raises a ``DataError`` naming the file and the reason."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PATCH_SHAPE = (96, 96, 3)
PATCH_BYTES = 96 * 96 * 3
SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def few(items: Sequence, limit: int = 5, fmt: Callable[[Any], str] = repr, sep: str = ", ") -> str:
    """The first ``limit`` items, formatted and joined, then ``(+N more)``: short, actionable."""
    shown, more = sep.join(fmt(x) for x in items[:limit]), len(items) - limit
    return shown + (sep if "\n" in sep else " ") + f"(+{more} more)" if more > 0 else shown


def not01(values: Any) -> np.ndarray:
    """True where a value is not a 0/1 label (NaN, other numbers and non-numbers included)."""
    return ~np.isin(np.asarray(values), (0, 1))


class DataError(ValueError):
    """Bad input data: the message names the file/row and what is wrong; ``problems`` the items."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


@dataclass(frozen=True)
class Problem:
    """One offending item: its id, where it lives and why it cannot be used."""

    id: str
    where: str
    reason: str


# TIFF tag → the values a Kaggle patch has (None: absent): 96×96, 8-bit, uncompressed, RGB,
# 3 interleaved unsigned samples, no extra (alpha) sample.
PLAIN_TAGS = {
    256: [(96,)], 257: [(96,)], 258: [(8, 8, 8), (8,)], 259: [(1,), None], 262: [(2,)],
    277: [(3,)], 284: [(1,), None], 338: [None], 339: [(1,), (1, 1, 1), None],
}  # fmt: skip


def _plain_tiff(data: bytes, where: str) -> np.ndarray | None:
    """A TIFF with ``PLAIN_TAGS`` (Kaggle's), 2× faster than tifffile; None for any other TIFF."""
    bo = "<" if data[:2] == b"II" else ">"
    try:  # a header or IFD cut short raises struct.error: let tifffile explain
        (ifd,) = struct.unpack_from(bo + "I", data, 4)
        (n,) = struct.unpack_from(bo + "H", data, ifd)
        if struct.unpack_from(bo + "I", data, ifd + 2 + 12 * n)[0] != 0:
            return None  # several pages
        tags = {}
        for k in range(n):
            tag, kind, count, raw = struct.unpack_from(bo + "HHI4s", data, ifd + 2 + 12 * k)
            if kind in (3, 4) and count <= 1024:  # only SHORT / LONG tags matter here
                fmt, size = ("H", 2) if kind == 3 else ("I", 4)
                inline = count * size <= 4
                offset = 0 if inline else struct.unpack_from(bo + "I", raw)[0]
                tags[tag] = struct.unpack_from(f"{bo}{count}{fmt}", raw if inline else data, offset)
    except struct.error:
        return None
    starts, counts = tags.get(273, ()), tags.get(279, ())
    plain = all(tags.get(tag) in ok for tag, ok in PLAIN_TAGS.items())
    if not plain or len(starts) != len(counts) or sum(counts) != PATCH_BYTES:
        return None
    if (end := max(o + c for o, c in zip(starts, counts, strict=True))) > len(data):
        raise DataError(f"{where}: truncated TIFF ({len(data)} bytes, image data ends at {end})")
    if len(starts) > 1:
        data, starts = b"".join(data[o : o + c] for o, c in zip(starts, counts, strict=True)), (0,)
    return np.frombuffer(data, np.uint8, PATCH_BYTES, starts[0]).reshape(PATCH_SHAPE)


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """TIFF, PNG or JPEG → 96×96×3 uint8 RGB; any other image is a DataError naming ``where``."""
    try:
        if data[:4] not in (b"II*\x00", b"MM\x00*"):
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                if im.mode != "RGB":  # named by its mode: grayscale, RGBA, P (palette), CMYK, …
                    kind = "grayscale" if im.mode in ("L", "LA") else im.mode
                    raise DataError(f"{where}: {kind} image, expected RGB")
                image = np.asarray(im)
        elif (image := _plain_tiff(data, where)) is None:
            import tifffile

            image = tifffile.imread(io.BytesIO(data))
    except DataError:
        raise
    except Exception as exc:  # corrupt / truncated / unknown format
        raise DataError(f"{where}: unreadable image ({type(exc).__name__}: {exc})") from None
    if image.ndim < 2 or image.size == 0:
        raise DataError(f"{where}: unreadable image (no image data)")
    if image.dtype != np.uint8:
        raise DataError(f"{where}: dtype {image.dtype}, expected uint8 RGB")
    if image.shape != PATCH_SHAPE:
        channels = {2: 1, 3: image.shape[-1]}.get(image.ndim)  # 2-D: grayscale
        kind = {1: "grayscale image", 4: "RGBA image"}.get(channels, "size")
        raise DataError(f"{where}: {kind} {image.shape}, expected RGB {PATCH_SHAPE}")
    return image


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
    """Items of one split: ids, optional labels and slide groups, and where each one's pixels are:
    a file per item (``paths``) or rows of PCam HDF5 x files (``parts``: (file, rows) in order)."""

    name: str
    ids: list[str]
    labels: np.ndarray | None
    groups: np.ndarray | None = None
    paths: list[Path] | None = None
    problems: list[Problem] = field(default_factory=list)
    parts: list[tuple[Path, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def block_reads(self) -> bool:  # HDF5: reading rows in slices beats per-item reads
        return bool(self.parts)

    def _spans(self, start: int, stop: int):
        """(x file, first row, stop row) in each part that rows ``start:stop`` reach."""
        lo = 0
        for path, n in self.parts:
            if max(start, lo) < min(stop, lo + n):
                yield path, max(start, lo) - lo, min(stop, lo + n) - lo
            lo += n

    def where(self, index: int) -> str:
        if self.paths is not None:
            return str(self.paths[index])
        path, first, _ = next(self._spans(index, index + 1))
        return f"{path}[{first}]"

    def read(self, index: int) -> np.ndarray:
        return read_image(self.paths[index]) if self.paths else self.read_many(index, index + 1)[0]

    def read_many(self, start: int, stop: int) -> np.ndarray:  # for block_reads
        spans = self._spans(start, stop)
        return np.concatenate([read_h5(path, "x", slice(a, b)) for path, a, b in spans])

    def fingerprint(self) -> str:
        """Cheap identity: ids, labels, groups, listing problems, file sizes and mtimes."""
        h = hashlib.blake2b(f"{self.name}\n{len(self)}\n".encode(), digest_size=16)
        h.update("\n".join(self.ids).encode())
        for extra in (self.labels, self.groups):
            h.update(b"-" if extra is None else "\n".join(map(str, extra.tolist())).encode())
        h.update(repr([(p.id, p.reason) for p in self.problems]).encode())
        for path in (self.paths or []) + [path for path, _ in self.parts]:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise DataError(f"{path}: cannot stat ({exc.strerror})") from None
            h.update(struct.pack("<qq", st.st_size, st.st_mtime_ns))
        return h.hexdigest()


def read_csv(path: Path, what: str, needs: Sequence[str] = ()) -> pd.DataFrame:
    """``path`` as strings, with an error naming it when it is missing, not CSV or lacks columns."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot parse CSV ({exc})") from None
    if missing := sorted(set(needs) - set(frame.columns)):
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame


def read_labels(csv_path: str | os.PathLike) -> tuple[pd.DataFrame, list[Problem]]:
    """Kaggle's ``id,label`` csv → (valid rows, with their csv line in ``where``; bad rows): rows
    with an empty id, a label other than 0/1, or an id listed twice are left out."""
    frame = read_csv(csv_path := Path(csv_path), "labels file", ["id", "label"])
    frame["id"], frame["row"] = frame["id"].str.strip(), np.arange(2, len(frame) + 2)  # csv lines
    bad = (frame["id"] == "").to_numpy() | not01(pd.to_numeric(frame["label"], errors="coerce"))
    problems = [
        Problem(i, f"{csv_path}:{row}", f"label {label!r} is not 0/1")
        if i
        else Problem(f"line {row}", str(csv_path), "empty id")
        for i, label, row in frame[bad][["id", "label", "row"]].itertuples(index=False)
    ]
    dup = frame["id"].duplicated(keep=False) & ~bad
    problems += [
        Problem(i, f"{csv_path}:{','.join(map(str, rows))}", "duplicate id (listed twice)")
        for i, rows in frame[dup].groupby("id", sort=False)["row"]
    ]
    frame = frame[~(bad | dup)].reset_index(drop=True)
    where = f"{csv_path}:" + frame["row"].astype(str)
    return frame.assign(label=frame["label"].astype(float).astype(np.int8), where=where), problems


def _images_in(folder: Path) -> tuple[dict[str, Path], list[Problem]]:
    """Map id (file stem) → path of the images in ``folder``; one id for two files is a problem."""
    found: dict[str, list[str]] = {}
    for entry in os.scandir(folder):
        if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
            found.setdefault(entry.name.rsplit(".", 1)[0], []).append(entry.name)
    twice = {stem: ", ".join(sorted(names)) for stem, names in found.items() if len(names) > 1}
    problems = [
        Problem(s, str(folder), f"duplicate id: files {n}") for s, n in sorted(twice.items())
    ]
    return {s: folder / names[0] for s, names in found.items() if s not in twice}, problems


def _paired(name: str, listed: pd.DataFrame, files: dict, problems: list, no_file, unlisted: str):
    """The ``listed`` items (id, where, maybe label) that have an image file; a problem for each
    listed id without a file and each file not listed, unless that id has one already."""
    reported = {p.id for p in problems}
    rows, known = zip(listed["id"], listed["where"], strict=True), files.keys() | reported
    problems = problems + [Problem(i, w, no_file(i)) for i, w in rows if i not in known]
    named = set(listed["id"]) | reported
    problems += [Problem(i, str(p), unlisted) for i, p in sorted(files.items()) if i not in named]
    listed = listed[~listed["id"].isin({p.id for p in problems})]
    ids, labels = listed["id"].tolist(), listed.get("label")
    labels = None if labels is None else labels.to_numpy(np.int8)
    return PatchSource(name, ids, labels, None, [files[i] for i in ids], problems)


def kaggle_train(root: str | os.PathLike, groups_csv=None) -> PatchSource:
    """Kaggle layout: every label row needs a file and every file a label; ``groups_csv``: the
    patch→slide map (``id,wsi`` csv, e.g. the community patch_id_wsi file)."""
    root, folder = Path(root), Path(root) / "train"
    labels, problems = read_labels(root / "train_labels.csv")
    if not folder.is_dir():
        raise DataError(f"{folder}: train folder not found next to train_labels.csv")
    files, more = _images_in(folder)
    no_file = f"label row without an image file (no {folder}/{{}}.tif)".format
    unlisted = "image file without a row in train_labels.csv"
    name = f"kaggle-train:{root.resolve()}"
    source = _paired(name, labels, files, problems + more, no_file, unlisted)
    if groups_csv:
        frame = read_csv(groups_csv := Path(groups_csv), "slide map")
        group_col = next((c for c in ("wsi", "slide", "group") if c in frame.columns), None)
        if group_col is None:
            raise DataError(f"{groups_csv}: needs a slide column named wsi, slide or group")
        id_col = "id" if "id" in frame.columns else frame.columns[0]
        groups = frame.drop_duplicates(id_col, keep="last").set_index(id_col)[group_col]
        if missing := [i for i in source.ids if i not in groups.index]:
            raise DataError(f"{groups_csv}: no slide for {len(missing)} id(s), e.g. {missing[:5]}")
        source.groups = groups[source.ids].to_numpy(str)
    return source


def kaggle_test(root: str | os.PathLike) -> PatchSource:
    """Kaggle test folder, in ``sample_submission.csv`` order when that file is present."""
    root = Path(root)
    folder = root / "test" if (root / "test").is_dir() else root
    files, problems = _images_in(folder) if folder.is_dir() else ({}, [])
    if not files and not problems:
        raise DataError(f"{folder}: no test images (*.tif) found")
    listed = pd.DataFrame({"id": sorted(files), "where": str(folder)})
    if (sample := root / "sample_submission.csv").is_file():
        ids = read_csv(sample, "sample submission", ["id"])["id"].str.strip()
        twice = sorted(set(ids[ids.duplicated()]))
        problems += [Problem(i, str(sample), "duplicate id (listed twice)") for i in twice]
        listed = pd.DataFrame({"id": ids, "where": str(sample)})
    no_file = f"no image file {folder}/{{}}.tif".format
    unlisted = "test image not in sample_submission.csv"
    return _paired(f"kaggle-test:{folder.resolve()}", listed, files, problems, no_file, unlisted)


def class_folders(root: str | os.PathLike) -> PatchSource:
    """``DIR/0/*`` and ``DIR/1/*``: the label is the folder name (e.g. PCam exported as JPEG)."""
    root = Path(root)
    for y in "01":
        if not (root / y).is_dir():
            raise DataError(f"{root / y}: class folder missing (expected {root}/0 and {root}/1)")
    (zero, problems), (one, more) = _images_in(root / "0"), _images_in(root / "1")
    both, why = zero.keys() & one.keys(), "in both class folders: {} has label 0 and 1".format
    problems += more + [Problem(s, str(root), why(zero[s].name)) for s in sorted(both)]
    items = sorted((y, s) for y, found in enumerate((zero, one)) for s in found if s not in both)
    if not items and not problems:
        raise DataError(f"{root}: class folders 0/ and 1/ contain no images")
    ids, paths = [f"{y}/{s}" for y, s in items], [(zero, one)[y][s] for y, s in items]
    labels = np.asarray([y for y, _ in items], np.int8)
    return PatchSource(f"folders:{root.resolve()}", ids, labels, None, paths, problems)


def read_h5(path: Path, name: str, rows: slice | None = None) -> Any:
    """Rows of dataset ``name`` (all of y; of x only its (shape, dtype) without ``rows``)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if rows is not None:
                return np.asarray(f[name][rows], np.uint8)
            return (f[name].shape, f[name].dtype) if name == "x" else np.asarray(f[name]).ravel()
    except Exception as exc:
        raise DataError(f"{path}: unreadable HDF5 ({type(exc).__name__}: {exc})") from None


def open_source(spec: str | os.PathLike, split: str = "train", groups_csv=None) -> PatchSource:
    """Recognise the layout at ``spec`` and return its ``split`` ('train', 'valid' or 'test');
    on PCam's full HDF5 layout 'train' is every labelled patch (train, valid and test)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (root := Path(spec)).exists():
        raise DataError(f"{root}: data path does not exist")
    from .pcam import H5_PATTERN, is_pcam_layout, pcam_h5  # pcam.py builds on this module

    if split == "train" and is_pcam_layout(root):
        return pcam_h5(root, SPLITS)
    if (root / H5_PATTERN.format(split=split, xy="x")).is_file():
        return pcam_h5(root, split)
    if (root / "train_labels.csv").is_file() or (root / "sample_submission.csv").is_file():
        return kaggle_test(root) if split == "test" else kaggle_train(root, groups_csv)
    if (root / split / "0").is_dir() or ((root / "0").is_dir() and (root / "1").is_dir()):
        return class_folders(root / split if (root / split / "0").is_dir() else root)
    if split == "test" and any(p.suffix.lower() in (".tif", ".tiff") for p in root.iterdir()):
        return kaggle_test(root)
    raise DataError(
        f"{root}: not a known layout. Expected one of: train_labels.csv + train/ (Kaggle), "
        f"camelyonpatch_level_2_split_{split}_x.h5 (PCam HDF5), 0/ and 1/ class folders "
        f"(or {split}/0 and {split}/1), or a folder of test .tif files"
    )
