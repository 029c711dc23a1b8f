"""Write and check Kaggle submission CSVs so a bad file is caught before it costs a submission."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .cache import atomic_path, atomic_write_text
from .sources import H5_PATTERN, few, vector

COLUMNS = ["id", "label"]


class SubmissionError(ValueError):
    """A submission that Kaggle would reject or score badly."""


def _test_tifs(path: Path) -> tuple[Path, list[str]]:
    """The test folder (``path/test``, else ``path``) and the sorted ids of its ``<id>.tif``."""
    folder = path / "test" if (path / "test").is_dir() else path
    return folder, sorted(f.stem for f in folder.iterdir() if f.suffix.lower() in (".tif", ".tiff"))


def expected_test_ids(path: str | os.PathLike[str]) -> list[str]:
    """Every test id a submission must cover, from a dataset root, its test folder or its csv.

    A dataset root (as ``pcam … --data`` takes) gives its ``sample_submission.csv`` (file
    order) or else its ``test/`` listing; a folder of ``<id>.tif`` gives its ids (sorted); a
    csv gives its ``id`` column (file order).
    """
    p = Path(path)
    if p.is_dir():
        if (p / "sample_submission.csv").is_file():
            return expected_test_ids(p / "sample_submission.csv")
        folder, ids = _test_tifs(p)
        if not ids:
            raise SubmissionError(
                f"no .tif files in test directory {folder}, and no sample_submission.csv in {p}"
            )
        return ids
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: neither a dataset folder, a test directory nor a sample_submission.csv"
        )
    frame = pd.read_csv(p, dtype=str, keep_default_na=False)
    if "id" not in frame.columns:
        raise SubmissionError(f"{p} has no 'id' column (columns: {list(frame.columns)})")
    dup = frame["id"][frame["id"].duplicated()].unique().tolist()
    if dup:
        raise SubmissionError(f"{p} lists {len(dup)} ids more than once: {few(dup)}")
    return frame["id"].tolist()


def is_kaggle_test(path: str | os.PathLike[str]) -> bool:
    """Does ``path`` hold a Kaggle test set (a sample_submission.csv or test .tif files)?"""
    p = Path(path)
    if not p.is_dir():
        return p.name == "sample_submission.csv" and p.is_file()
    return (p / "sample_submission.csv").is_file() or bool(_test_tifs(p)[1])


def kaggle_test_ids(data_dir: str | os.PathLike[str]) -> list[str] | None:
    """The ids a Kaggle submission from ``data_dir`` must cover (:func:`expected_test_ids`), or
    None, after one line saying why, where ``data_dir`` holds no Kaggle test set (PCam's HDF5
    layout): its test split is PCam's, never Kaggle's, and must not reach a submission."""
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
    missing = [str(i) for i in expected if str(i) not in have]
    if missing:
        raise SubmissionError(
            f"{where} lacks {len(missing)} test id(s) a submission must cover: {few(missing)} "
            "(packed with --exclude-bad? fix or restore those files and pack again)"
        )


def check_submission(
    path_or_frame: str | os.PathLike[str] | pd.DataFrame,
    expected_ids: Iterable[str] | None,
) -> pd.DataFrame:
    """Validate a submission (columns, ids, probabilities); return it as ``id`` str/``label`` float.

    ``expected_ids=None`` skips the missing/extra-id checks (duplicates are still refused).
    All problems found are reported together in one :class:`SubmissionError`.
    """
    if isinstance(path_or_frame, pd.DataFrame):
        frame, where = path_or_frame.reset_index(drop=True), "submission frame"
    else:
        where = str(Path(path_or_frame))
        try:  # as strings, so odd cells are reported rather than silently coerced
            frame = pd.read_csv(where, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError as err:
            raise SubmissionError(f"{where} is empty; expected a header row 'id,label'") from err
    _check_columns(frame, where)
    ids = frame["id"].astype(str)
    labels = pd.to_numeric(frame["label"], errors="coerce").astype(np.float64)
    problems = _id_problems(ids, expected_ids) + _label_problems(ids, frame["label"], labels)
    if problems:
        raise SubmissionError(f"{where} is not a valid submission:\n - " + "\n - ".join(problems))
    _check_ranking(labels, where)
    return pd.DataFrame({"id": ids.to_numpy(), "label": labels.to_numpy()})


def _check_columns(frame: pd.DataFrame, where: str) -> None:
    cols = [str(c) for c in frame.columns]
    if cols == COLUMNS:
        return
    missing = [c for c in COLUMNS if c not in cols]
    extra = [c for c in cols if c not in COLUMNS]
    detail = [f"missing column(s) {missing}"] if missing else []
    detail += [f"unexpected column(s) {few(extra)}"] if extra else []
    detail = detail or ["columns in the wrong order"]
    hint = " - is the header row 'id,label' missing?" if missing else ""
    raise SubmissionError(
        f"{where}: expected exactly the columns ['id', 'label'], got {cols}: "
        + "; ".join(detail)
        + hint
    )


def _id_problems(ids: pd.Series, expected_ids: Iterable[str] | None) -> list[str]:
    problems = [] if len(ids) else ["no rows"]
    empty_id = ids.str.strip() == ""
    if empty_id.any():
        problems.append(
            f"{int(empty_id.sum())} empty id(s) at row(s) {few(ids.index[empty_id].tolist())}"
        )
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        problems.append(f"{len(dup)} duplicate id(s): {few(dup)}")
    if expected_ids is None:
        return problems
    expected = [str(i) for i in expected_ids]
    expected_set, got = set(expected), set(ids)
    missing = [i for i in expected if i not in got]
    extra = [i for i in ids.drop_duplicates() if i not in expected_set]
    if missing:
        problems.append(f"{len(missing)} missing id(s) of {len(expected)}: {few(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected id(s) not in the test set: {few(extra)}")
    return problems


def _label_problems(ids: pd.Series, raw: pd.Series, labels: pd.Series) -> list[str]:
    blank = raw.astype(str).str.strip().str.lower().isin(["nan", ""])
    non_numeric = labels.isna() & ~pd.isna(raw) & ~blank
    nan, inf = labels.isna() & ~non_numeric, np.isinf(labels)
    finite = labels[~labels.isna() & ~inf]
    outside = finite[(finite < 0.0) | (finite > 1.0)]
    problems = []
    if non_numeric.any():
        bad = [f"{ids[i]!r}: {raw[i]!r}" for i in raw.index[non_numeric]]
        problems.append(f"{len(bad)} non-numeric label(s): {few(bad, fmt=str)}")
    if nan.any():
        problems.append(f"{int(nan.sum())} NaN/empty label(s) for id(s) {few(ids[nan].tolist())}")
    if inf.any():
        problems.append(f"{int(inf.sum())} infinite label(s) for id(s) {few(ids[inf].tolist())}")
    if len(outside):
        bad = [f"{ids[i]!r}: {labels[i]:g}" for i in outside.index]
        problems.append(f"{len(bad)} label(s) outside [0, 1]: {few(bad, fmt=str)}")
    return problems


def _check_ranking(labels: pd.Series, where: str) -> None:
    """AUC needs a ranking: refuse hard 0/1 labels and constant submissions."""
    if len(labels) > 1 and labels.isin([0.0, 1.0]).all():
        raise SubmissionError(
            f"{where}: all {len(labels)} labels are exactly 0 or 1. Kaggle scores this competition "
            "by ROC AUC, which only uses the ranking of the tumour probabilities; hard 0/1 labels "
            "collapse that ranking into two ties and throw most of the AUC away (the reference "
            "solution lost most of its score this way). Write the sigmoid probabilities instead."
        )
    if len(labels) > 1 and labels.nunique() == 1:
        raise SubmissionError(
            f"{where}: all {len(labels)} labels equal {labels.iloc[0]:g}; a constant submission "
            "has no ranking, so its ROC AUC is 0.5 - did the model collapse?"
        )


def write_submission(
    ids: Iterable[Any],
    probs: Any,
    path: str | os.PathLike[str],
    *,
    expected_ids: Iterable[str] | None = None,
    run: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``id,label`` probabilities (never thresholded) atomically, only if they pass checks.

    Rows follow ``expected_ids`` order when given (e.g. ``expected_test_ids(sample_submission)``).
    The CSV goes to a temp file in the target directory, is re-read and checked, then
    ``os.replace``-d into place, so a failed write never leaves a partial or invalid file.
    ``run`` (the run directory or .keras file that made ``probs``) is first checked by
    :func:`check_no_leak`, then recorded beside the file (``PATH.run.json``) for ``pcam submit``.
    """
    if run is not None:
        check_no_leak(run)
    ids = [str(i) for i in ids]
    try:
        p = vector(probs, "probs")
    except ValueError as err:
        raise SubmissionError(str(err)) from None
    if len(ids) != len(p):
        raise SubmissionError(f"{len(ids)} ids but {len(p)} probabilities")
    frame = pd.DataFrame({"id": ids, "label": p})
    expected = None if expected_ids is None else [str(i) for i in expected_ids]
    frame = check_submission(frame, expected)
    if expected is not None:
        frame = frame.set_index("id").loc[expected].reset_index()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, durable=True) as tmp:
        frame.to_csv(tmp, index=False)
        check_submission(tmp, expected)
    note = target.with_name(target.name + RUN_NOTE)
    if run is None:
        note.unlink(missing_ok=True)  # an earlier run's note would name the wrong run
    else:
        model = Path(run).resolve()
        made_by = str(run) if _pretrained(run) else str(model if model.is_dir() else model.parent)
        atomic_write_text(note, json.dumps({"run": made_by}) + "\n", durable=True)
    return target


# --- No leaked score: Kaggle's test set is drawn from PCam's valid and test splits ---------

LEAKY_SPLITS = ("valid", "test")
RUN_NOTE = ".run.json"  # submission.csv → submission.csv.run.json: the run that wrote it
# PCam's file names and patch ids (pcam_h5: "valid/7"; TFDS exports: "valid_7"; class folders
# exported from either: "0/valid_7").
_PCAM_FILE = re.compile(r"camelyonpatch_level_2_split_(train|valid|test)_")
_PCAM_ID = r"^(?:[01]/)?(train|valid|test)[/_]\d+$"


@dataclass(frozen=True)
class TrainingSource:
    """One dataset a model learned from: who trained on it, its path as recorded, and the PCam
    splits recognised in it (empty when it is not recognisably PCam)."""

    model: str
    data: str
    pcam_splits: frozenset[str]


def _splits_named(text: str) -> set[str]:
    """PCam splits a data path names by PCam's HDF5 file names."""
    return set(_PCAM_FILE.findall(text))


def _data_path(data: str, run_dir: Path) -> Path | None:
    """The recorded data path as it exists now: as given, from the project root or the run."""
    from .config import project_root

    path = Path(data).expanduser()
    for candidate in (path, project_root() / path, run_dir.parent / path):
        if data and candidate.exists():
            return candidate
    return None


def _pcam_splits(data: str, run_dir: Path) -> frozenset[str]:
    """What a run trained on, from its recorded data, the cache there and its split.csv ids."""
    found = _splits_named(data)
    root = _data_path(data, run_dir)
    if root is not None and (root / "meta.json").is_file():  # a packed cache: what it packed
        try:
            found |= _splits_named(str(json.loads((root / "meta.json").read_text())["source"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise SubmissionError(f"{root / 'meta.json'}: unreadable ({exc})") from None
    if root is not None and (root / H5_PATTERN.format(split="train", xy="x")).is_file():
        found.add("train")  # the PCam HDF5 layout (split pcam: valid/test too, its ids tell)
    if (run_dir / "split.csv").is_file():
        from .stream import read_split

        ids = read_split(run_dir)["id"]
        found |= set(ids.str.extract(_PCAM_ID, expand=False).dropna().unique())
    return frozenset(found)


def _run_dir(link: Path, named_by: str) -> Path:
    """The run directory behind a run directory or .keras file, or a refusal naming why not."""
    if link.is_dir() and (link / "config.json").is_file():
        return link
    if link.is_file() and (link.parent / "config.json").is_file():
        return link.parent
    what = "does not exist" if not link.exists() else "has no config.json beside it"
    raise SubmissionError(
        f"{link} ({named_by}) {what}, so what it was trained on cannot be checked; a "
        "submission needs a run directory that records its data"
    )


def _pretrained(model: str | os.PathLike[str]) -> bool:
    from .pretrained import is_pretrained

    return is_pretrained(model)


# The shipped model (``init="pretrained"``) trained on PCam's train split only.
PRETRAINED_SOURCE = TrainingSource(
    "pretrained", "PCam train (pcamlib.pretrained)", frozenset({"train"})
)


def training_sources(run: str | os.PathLike[str]) -> list[TrainingSource]:
    """Every dataset behind a run's weights: its own ``config.json`` data, then along ``init``.

    ``init`` null: the chain ends (random or ImageNet weights); ``"pretrained"``: the shipped
    model, trained on PCam train only; a run directory or a .keras file inside one: followed.
    A link whose data is not recorded (a bare .keras file, a missing folder) is refused.
    PCam's splits are recognised by PCam's HDF5 file names in the recorded path, a packed
    cache's recorded source and PCam-style ids in
    ``split.csv`` (``valid/7``, ``valid_7``). Not recognised: PCam patches under other names,
    e.g. class folders of renamed images, or HDF5 files renamed to the train split's names.
    """
    sources: list[TrainingSource] = []
    link, named_by, seen = str(run), "the run", set()
    while not _pretrained(link):
        run_dir = _run_dir(Path(link), named_by)
        if run_dir.resolve() in seen:
            raise SubmissionError(f"{run_dir}: its init chain loops back to itself")
        seen.add(run_dir.resolve())
        try:
            config = json.loads((run_dir / "config.json").read_text())
        except ValueError as exc:
            raise SubmissionError(f"{run_dir / 'config.json'}: unreadable ({exc})") from None
        data = str(config.get("data") or "")
        sources.append(TrainingSource(str(run_dir), data, _pcam_splits(data, run_dir)))
        if config.get("init") is None:
            return sources
        init = str(config["init"])
        found = None if _pretrained(init) else _data_path(init, run_dir)
        link, named_by = str(found or init), f"init of {run_dir}"
    return [*sources, PRETRAINED_SOURCE]


def check_no_leak(run: str | os.PathLike[str]) -> list[TrainingSource]:
    """Refuse a run whose weights saw PCam valid or test data (its own or via ``init``).

    Kaggle's test set is drawn from PCam's valid and test splits, so such a model's Kaggle
    score would be leaked. Returns :func:`training_sources` when the run is clean.
    """
    sources = training_sources(run)
    for i, source in enumerate(sources):
        leaked = sorted(source.pcam_splits & set(LEAKY_SPLITS))
        if leaked:
            how = "was trained" if i == 0 else f"was fine-tuned from {source.model}, trained"
            raise SubmissionError(
                f"{run}: refused: it {how} on PCam's {' and '.join(leaked)} split "
                f"({source.data}), and Kaggle's test set is drawn from PCam's valid and test "
                "splits, so its Kaggle score would be leaked; train on PCam train or Kaggle data"
            )
    return sources


def submission_run(path: str | os.PathLike[str]) -> Path | None:
    """The run that wrote a submission: recorded by ``write_submission(run=…)``, or the run
    directory the file sits in; None when unknown."""
    path = Path(path)
    note = path.with_name(path.name + RUN_NOTE)
    if note.is_file():
        try:
            return Path(json.loads(note.read_text())["run"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SubmissionError(f"{note}: unreadable ({exc})") from None
    return path.parent if (path.parent / "config.json").is_file() else None
