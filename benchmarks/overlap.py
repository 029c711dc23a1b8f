"""Which patches of the embedded sample have a near-identical twin in a PCam training set.

    python benchmarks/overlap.py --data data/sample --against PCAM_TRAIN \
        --out pcamlib/pretrained/sample_overlap.csv
    python benchmarks/overlap.py --data data/sample --against PCAM_VALID     (prints only)

``--data``: a Kaggle-layout folder (``train/`` with ``train_labels.csv``, and ``test/``).
``--against``: a folder of PCam training patches in class folders, e.g. data/train of
github.com/vflorenc/AI4ALL-PCam. Kaggle's patches are PCam's, so a model trained on PCam has
seen some of the sample; scores of such a model must leave those rows out.

Content hashes cannot find them: Kaggle stores TIFF, that export JPEG, so the pixels differ
by the JPEG error. Thumbnails do not: each patch becomes 12×12×3 means of 8×8 blocks (area
average, float), and a sample patch's twin is its nearest thumbnail by maximum absolute
difference, when that is at most ``--tolerance`` (0–255 units). Measured on the 1,629 sample
patches against the 20,000 train JPEGs of that export: the 127 twins (full-resolution
correlation ≥ 0.978) lie within 7.9, the nearest thumbnail of every other patch is 14.6 or
farther (14.1 against its 3,000 valid JPEGs), so 10 sits in the gap. Near-blank patches (pixel
s.d. < 5) are the exception no tolerance fixes: 3 match another blank patch at 6.0–9.0
(correlation ≤ 0.71) and are listed too, which is harmless: to a model, a blank patch it saw
and one it did not are the same input. The 8 dihedral views of each sample patch found no
further twin at any tolerance up to 10, so only the patch itself is compared.

Found so (``pcamlib/pretrained/sample_overlap.csv``): 130 of the 1,600 training patches have
a twin among those 20,000 train JPEGs, labels agreeing on all 130; none of the 29 test patches
does. Against the 3,000 valid JPEGs: 1 test patch (a true twin), and 3 near-blank training
patches matching other blank patches (correlation ≤ 0.51), all 3 also listed from train.

Writes (atomically) one row per sample patch with a twin: ``id``, ``split`` (train/test of the
sample), ``label`` (empty for test), ``match`` (the PCam file, relative to --against),
``match_label``, ``distance``. Prints the nearest-distance distribution and the counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pcamlib.cache import atomic_write_text  # noqa: E402
from pcamlib.sources import PatchSource, open_source  # noqa: E402

# What pcamlib.stream.read_overlap reads (not imported from there: it would load Keras).
OVERLAP_COLUMNS = ["id", "split", "label", "match", "match_label", "distance"]
BLOCK = 8  # 96 / 8 = 12 thumbnail cells a side
TOLERANCE = 10.0  # see the module docstring for how the data chose it


def thumbnails(source: PatchSource) -> np.ndarray:
    """(n, 432) int32 sums of each 8×8 block (the area average × 64, kept exact as integers)."""
    out = np.empty((len(source), 12 * 12 * 3), np.int32)
    for i in range(len(source)):
        image = source.read(i).astype(np.int32)
        out[i] = image.reshape(12, BLOCK, 12, BLOCK, 3).sum(axis=(1, 3)).ravel()
    return out


def nearest(queries: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the index in ``pool`` of its nearest thumbnail (max-abs), and that distance."""
    pool16 = pool.astype(np.int16)  # sums ≤ 64 × 255 = 16,320: differences fit int16
    index, distance = np.empty(len(queries), np.int64), np.empty(len(queries))
    for q, query in enumerate(queries.astype(np.int16)):
        d = np.abs(pool16 - query).max(axis=1)
        index[q] = int(np.argmin(d))
        distance[q] = d[index[q]] / BLOCK**2  # back to 0–255 units
    return index, distance


def overlap(data: Path, against: Path, tolerance: float) -> tuple[pd.DataFrame, np.ndarray]:
    """The twin rows (OVERLAP_COLUMNS) and every sample patch's nearest distance."""
    pool = open_source(against)
    if pool.labels is None or pool.paths is None:
        raise SystemExit(f"{against}: expected labelled class folders 0/ and 1/")
    pool_thumbs = thumbnails(pool)
    frames, distances = [], []
    for split in ("train", "test"):
        sample = open_source(data, split)
        index, distance = nearest(thumbnails(sample), pool_thumbs)
        labels = [""] * len(sample) if sample.labels is None else sample.labels.tolist()
        frame = pd.DataFrame({"id": sample.ids, "split": split, "label": labels})
        frame["match"] = [pool.paths[j].relative_to(against).as_posix() for j in index]
        frame["match_label"] = pool.labels[index]
        frame["distance"] = distance.round(3)
        frames.append(frame[distance <= tolerance])
        distances.append(distance)
    return pd.concat(frames, ignore_index=True)[OVERLAP_COLUMNS], np.concatenate(distances)


def report(twins: pd.DataFrame, distances: np.ndarray, against: Path, tolerance: float) -> None:
    """The distance distribution (twins far below the rest) and the counts per sample split."""
    edges = [0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 30, 50, 256]
    counts, _ = np.histogram(distances, edges)
    print(f"nearest thumbnail distance (max abs, 0-255) of {len(distances)} sample patches:")
    for lo, hi, n in zip(edges, edges[1:], counts, strict=False):
        print(f"  [{lo:>3}, {hi:>3}): {n}")
    near, far = distances[distances <= tolerance], distances[distances > tolerance]
    print(
        f"tolerance {tolerance}: farthest twin {near.max(initial=0):.2f}, "
        f"nearest non-twin {far.min(initial=np.inf):.2f}"
    )
    for split in ("train", "test"):
        rows = twins[twins["split"] == split]
        agree = (rows["label"].astype(str) == rows["match_label"].astype(str)).sum()
        labels = f", labels agree on {agree}" if split == "train" else ""
        print(f"{split}: {len(rows)} sample patches have a twin in {against}{labels}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/sample"))
    parser.add_argument("--against", type=Path, required=True, help="PCam class folders 0/ 1/")
    parser.add_argument("--out", type=Path, help="CSV to write (default: print only)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = parser.parse_args(argv)
    twins, distances = overlap(args.data, args.against, args.tolerance)
    report(twins, distances, args.against, args.tolerance)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, twins.to_csv(index=False))
        print(f"wrote {len(twins)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
