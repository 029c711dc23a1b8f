"""Write and check Kaggle submission CSVs, so a bad or leaked file is caught before it costs a
submission: columns, ids, probabilities, and what the model behind it trained on."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .cache import atomic_path, atomic_write_text
from .config import project_root
from .metrics import vector
from .pretrained import NAME, is_pretrained
from .sources import SPLITS, DataError, few, kaggle_test, read_csv

COLUMNS = ["id", "label"]
SAMPLE = "sample_submission.csv"
RUN_NOTE = ".run.json"  # submission.csv → submission.csv.run.json: the run that wrote it


class SubmissionError(ValueError):
    """A submission that Kaggle would reject or score badly."""


def expected_test_ids(path: str | os.PathLike[str]) -> list[str]:
    """Every test id a submission must cover: a sample csv's ``id`` column (file order; a dataset
    root's sample_submission.csv), else the test images :func:`kaggle_test` finds (sorted)."""
    p = Path(path)
    if p.is_dir() and not (p / SAMPLE).is_file():
        try:
            test = kaggle_test(p)
        except DataError:
            why = f"{p}: no .tif test images in it or in its test/ folder, and no {SAMPLE}"
            raise SubmissionError(why) from None
        return sorted(test.ids + [q.id for q in test.problems])  # a.tif and a.tiff: still id a
    csv = p / SAMPLE if p.is_dir() else p
    if not csv.is_file():
        raise FileNotFoundError(f"{p}: neither a dataset folder, a test directory nor a sample csv")
    ids = read_csv(csv, "sample submission", ["id"])["id"].str.strip()  # as kaggle_test reads it
    if dup := sorted(set(ids[ids.duplicated()])):
        raise SubmissionError(f"{csv} lists {len(dup)} ids more than once: {few(dup)}")
    return ids.tolist()


def is_kaggle_test(path: str | os.PathLike[str]) -> bool:
    """Does ``path`` hold a Kaggle test set (a sample_submission.csv or test images)?"""
    p = Path(path)
    if p.is_dir() and not (p / SAMPLE).is_file():
        try:
            return bool(expected_test_ids(p))
        except SubmissionError:  # no test images
            return False
    return p.is_dir() or p.name == SAMPLE and p.is_file()


def kaggle_test_ids(data_dir: str | os.PathLike[str]) -> list[str] | None:
    """The ids a Kaggle submission from ``data_dir`` must cover, or None after one line why."""
    if is_kaggle_test(data_dir):
        return expected_test_ids(data_dir)
    print(
        f"{data_dir}: no submission.csv written: a Kaggle submission needs the competition's "
        "layout (test/ and sample_submission.csv, e.g. data/full), and Kaggle's test set is "
        "drawn from PCam's valid and test splits, so they must never reach one"
    )
    return None


def missing_ids(expected: Iterable[str], have: Iterable[str], where: str) -> None:
    """Refuse to predict a submission that could not cover every expected test id."""
    have = set(have)
    if missing := [str(i) for i in expected if str(i) not in have]:
        raise SubmissionError(
            f"{where} lacks {len(missing)} test id(s) a submission must cover: {few(missing)} "
            "(packed with --exclude-bad? fix or restore those files and pack again)"
        )


def check_submission(
    path_or_frame: str | os.PathLike[str] | pd.DataFrame, expected_ids: Iterable[str] | None
) -> pd.DataFrame:
    """The submission as ``id`` str/``label`` float, once its columns, ids (unless
    ``expected_ids`` is None) and probabilities pass; every problem in one SubmissionError."""
    if isinstance(path_or_frame, pd.DataFrame):
        frame, where = path_or_frame.reset_index(drop=True), "submission frame"
    else:
        where = str(Path(path_or_frame))
        try:  # as strings, so odd cells are reported rather than silently coerced
            frame = pd.read_csv(where, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise SubmissionError(f"{where} is empty; expected a header row 'id,label'") from None
    if (cols := [str(c) for c in frame.columns]) != COLUMNS:
        missing = [c for c in COLUMNS if c not in cols]
        extra = [c for c in cols if c not in COLUMNS]
        detail = [f"missing column(s) {missing}"] * bool(missing)
        detail += [f"unexpected column(s) {few(extra)}"] * bool(extra)
        hint = " - is the header row 'id,label' missing?" if missing else ""
        got = f"{where}: expected exactly the columns {COLUMNS}, got {cols}: "
        raise SubmissionError(got + ("; ".join(detail) or "columns in the wrong order") + hint)
    ids = frame["id"].astype(str)
    labels = pd.to_numeric(frame["label"], errors="coerce").astype(np.float64)
    if problems := _problems(ids, frame["label"], labels, expected_ids):
        raise SubmissionError(f"{where} is not a valid submission:\n - " + "\n - ".join(problems))
    return pd.DataFrame({"id": ids.to_numpy(), "label": labels.to_numpy()})


def _problems(ids: pd.Series, raw: pd.Series, labels: pd.Series, expected_ids) -> list[str]:
    expected = None if expected_ids is None else [str(i) for i in expected_ids]
    empty, dup, unique = ids.str.strip() == "", ids[ids.duplicated()], ids.drop_duplicates()
    have = set(ids)
    missing = [] if expected is None else [i for i in expected if i not in have]
    extra = [] if expected is None else unique[~unique.isin(expected)].tolist()
    blank = raw.astype(str).str.strip().str.lower().isin(["nan", ""])
    odd = labels.isna() & ~pd.isna(raw) & ~blank
    nan, inf = labels.isna() & ~odd, np.isinf(labels)
    out = [f"{ids[i]!r}: {labels[i]:g}" for i in labels.index[((labels < 0) | (labels > 1)) & ~inf]]
    hard = len(labels) > 1 and labels.isin([0.0, 1.0]).all()
    found = [
        (not len(ids), "no rows"),
        (empty.any(), f"{int(empty.sum())} empty id(s) at row(s) {few(ids.index[empty].tolist())}"),
        (len(dup), f"{dup.nunique()} duplicate id(s): {few(dup.unique().tolist())}"),
        (missing, f"{len(missing)} missing id(s) of {len(expected or [])}: {few(missing)}"),
        (extra, f"{len(extra)} unexpected id(s) not in the test set: {few(extra)}"),
        (odd.any(), f"{int(odd.sum())} non-numeric label(s): "
         + few([f"{ids[i]!r}: {raw[i]!r}" for i in raw.index[odd]], fmt=str)),
        (nan.any(), f"{int(nan.sum())} NaN/empty label(s) for id(s) {few(ids[nan].tolist())}"),
        (inf.any(), f"{int(inf.sum())} infinite label(s) for id(s) {few(ids[inf].tolist())}"),
        (out, f"{len(out)} label(s) outside [0, 1]: {few(out, fmt=str)}"),
        # AUC needs a ranking: hard 0/1 labels are two ties, a constant one tie.
        (hard, f"all {len(labels)} labels are exactly 0 or 1. Kaggle scores this competition by "
         "ROC AUC, which only uses the ranking of the tumour probabilities; hard 0/1 labels "
         "collapse it into two ties and throw most of the AUC away. Write the probabilities."),
        (len(labels) > 1 and labels.nunique() == 1 and not hard, f"all {len(labels)} labels "
         f"equal {labels.max():g}; a constant submission has no ranking, so its ROC AUC is 0.5 "
         "- did the model collapse?"),
    ]  # fmt: skip
    return [message for bad, message in found if bad]


def write_submission(
    ids: Iterable[Any], probs: Any, path: str | os.PathLike[str], *, expected_ids=None, run=None
) -> Path:
    """Write ``id,label`` probabilities (never thresholded; ``expected_ids``' order) atomically,
    checked again before the rename. ``run``, behind ``probs``, must pass :func:`check_no_leak`;
    it is noted beside the file (``PATH.run.json``) for ``pcam submit``."""
    sources = [] if run is None else check_no_leak(run)
    ids, p = [str(i) for i in ids], vector(probs, "probs")
    if len(ids) != len(p):
        raise SubmissionError(f"{len(ids)} ids but {len(p)} probabilities")
    expected = None if expected_ids is None else [str(i) for i in expected_ids]
    frame = check_submission(pd.DataFrame({"id": ids, "label": p}), expected)
    if expected is not None:
        frame = frame.set_index("id").loc[expected].reset_index()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)
        check_submission(tmp, expected)
    note = target.with_name(target.name + RUN_NOTE)
    note.unlink(missing_ok=True)  # another run's note would name the wrong run
    if run is not None:
        made_by = run if is_pretrained(run) else sources[0].model
        atomic_write_text(note, json.dumps({"run": str(made_by)}) + "\n")
    return target


# --- No leaked score: Kaggle's test set is drawn from PCam's valid and test splits ---------

# PCam's file names, and its ids: pcam_h5 "valid/7" (stream.PCAM_ID), TFDS "valid_7" and
# class-folder exports "0/valid_7"
_SPLIT = f"({'|'.join(SPLITS)})"
_PCAM_FILE = re.compile(f"camelyonpatch_level_2_split_{_SPLIT}_")
_PCAM_ID = rf"^(?:[01]/)?{_SPLIT}[/_]\d+$"


class TrainingSource(NamedTuple):
    """A dataset a model learned from: who trained on it, its recorded path, its PCam splits."""

    model: str
    data: str
    pcam_splits: frozenset[str]


PRETRAINED_SOURCE = TrainingSource(NAME, "PCam train (pcamlib.pretrained)", frozenset({"train"}))


def _json(path: Path, key: str | None = None) -> Any:
    """A JSON file (or its ``key``), or a refusal naming the file."""
    try:
        data = json.loads(path.read_text())
        return data if key is None else data[key]
    except (ValueError, KeyError, TypeError) as exc:
        raise SubmissionError(f"{path}: unreadable ({exc})") from None


def _data_path(data: str, run_dir: Path) -> Path | None:
    """The recorded data path as it exists now: as given, from the project root or the run."""
    path = Path(data).expanduser()
    found = (p for p in (path, project_root() / path, run_dir.parent / path) if p.exists())
    return next(found, None) if data else None


def _pcam_splits(data: str, run_dir: Path) -> frozenset[str]:
    """The PCam splits a run trained on, by file names (a packed cache's source too), and ids."""
    from .stream import read_split  # lazily: it imports Keras

    found = set(_PCAM_FILE.findall(data))
    if (root := _data_path(data, run_dir)) is not None and (root / "meta.json").is_file():
        found |= set(_PCAM_FILE.findall(str(_json(root / "meta.json", "source"))))
    ids = read_split(run_dir)["id"]
    return frozenset(found | set(ids.str.extract(_PCAM_ID, expand=False).dropna().unique()))


def training_sources(run: str | os.PathLike[str]) -> list[TrainingSource]:
    """Every dataset behind a run's weights, along ``init`` (a run directory or .keras file,
    ``"pretrained"``; null ends it); unrecorded data is refused, PCam under other names missed."""
    sources, link, named_by = [], str(run), "the run"
    while not is_pretrained(link):
        path = Path(link).resolve()
        run_dir = path if path.is_dir() else path.parent
        if not path.exists() or not (run_dir / "config.json").is_file():
            what = "has no config.json beside it" if path.exists() else "does not exist"
            raise SubmissionError(
                f"{path} ({named_by}) {what}, so what it was trained on cannot be checked; a "
                "submission needs a run directory that records its data"
            )
        if str(run_dir) in (source.model for source in sources):
            raise SubmissionError(f"{run_dir}: its init chain loops back to itself")
        config = _json(run_dir / "config.json")
        data = config["data"]
        sources.append(TrainingSource(str(run_dir), data, _pcam_splits(data, run_dir)))
        if config["init"] is None:
            return sources
        found = None if is_pretrained(config["init"]) else _data_path(config["init"], run_dir)
        link, named_by = str(found or config["init"]), f"init of {run_dir}"
    return [*sources, PRETRAINED_SOURCE]


def check_no_leak(run: str | os.PathLike[str]) -> list[TrainingSource]:
    """Refuse a run whose weights saw PCam valid or test data (its own or via ``init``): Kaggle's
    test set is drawn from them. Returns :func:`training_sources` when the run is clean."""
    sources = training_sources(run)
    for i, source in enumerate(sources):
        if leaked := sorted(source.pcam_splits & {"valid", "test"}):
            how = "was trained" if i == 0 else f"was fine-tuned from {source.model}, trained"
            raise SubmissionError(
                f"{run}: refused: it {how} on PCam's {' and '.join(leaked)} split "
                f"({source.data}), and Kaggle's test set is drawn from PCam's valid and test "
                "splits, so its Kaggle score would be leaked; train on PCam train or Kaggle data"
            )
    return sources


def submission_run(path: str | os.PathLike[str]) -> Path | None:
    """The run that wrote a submission (its note, else the run directory it sits in), or None."""
    path = Path(path)
    if (note := path.with_name(path.name + RUN_NOTE)).is_file():
        return Path(_json(note, "run"))
    return path.parent if (path.parent / "config.json").is_file() else None
