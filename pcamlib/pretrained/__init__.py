"""The shipped model: ``pcam-cpu`` trained on 20,000 PCam *train* patches, usable offline.

``pcam-cpu.keras`` (weights only, no optimizer state), ``card.json`` (how it was made and how
it scores; ``MODEL_CARD.md`` is the same for people), ``train_content.txt.gz`` (the content
hashes of its training patches) and ``sample_overlap.csv``: the ids of the
embedded sample whose twin (a near-pixel-identical patch) is among its training patches,
found by ``benchmarks/overlap.py``. A score of this model never counts those rows.

Examples:
    >>> model = load_pretrained()
    >>> probs = predict_cache(model, load_patches("data/sample", "test"), tta=8)
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

NAME = "pretrained"  # what --model and --init accept for this model
HERE = Path(__file__).resolve().parent
MODEL_FILE = HERE / "pcam-cpu.keras"
CARD_FILE = HERE / "card.json"
OVERLAP_FILE = HERE / "sample_overlap.csv"
CONTENT_FILE = HERE / "train_content.txt.gz"


class PretrainedError(FileNotFoundError):
    """The shipped model file is missing or unreadable (one line naming the file)."""


def is_pretrained(model: str | os.PathLike | None) -> bool:
    """``model`` names the shipped model: ``"pretrained"`` or the path of its file."""
    if model is None:
        return False
    return str(model) == NAME or Path(model).resolve() == MODEL_FILE


def load_pretrained():
    """The shipped PCamNet (raw uint8 96×96 patches in, P(tumour) out), with no network."""
    import keras

    if not MODEL_FILE.is_file():
        raise PretrainedError(f"{MODEL_FILE}: the pretrained model file is missing (reinstall)")
    try:
        return keras.saving.load_model(MODEL_FILE, compile=False)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PretrainedError(f"{MODEL_FILE}: not a readable .keras model ({reason})") from None


@cache
def card() -> dict:
    """How the shipped model was made and how it scores (``card.json``)."""
    if not CARD_FILE.is_file():
        raise PretrainedError(f"{CARD_FILE}: the pretrained model's card is missing (reinstall)")
    return json.loads(CARD_FILE.read_text())


@cache
def _overlap() -> pd.DataFrame:
    if not OVERLAP_FILE.is_file():
        raise PretrainedError(f"{OVERLAP_FILE}: the sample's overlap list is missing (reinstall)")
    return pd.read_csv(OVERLAP_FILE, dtype={"id": str})


def seen_ids(cache, rows=None) -> set[str] | None:
    """Ids of ``cache`` whose patch the shipped model trained on; None when that is unknown.

    Exact copies of its training patches are found by content hash; the embedded sample's
    twins (Kaggle's TIFFs of the same patches) are listed in ``sample_overlap.csv``. Kaggle's
    test set is drawn from PCam's valid and test splits, never its train split. Unknown for
    other Kaggle training data and PCam's own train split (HDF5 ids ``train/N``): drawn from
    the split the model's patches came from, they hold twins of them that no list names.
    ``rows``: only these rows are to be scored (a run's val and test rows), so only they decide
    "unknown": PCam's valid and test splits come from other slides than its train split.
    """
    from ..stream import fingerprint

    ids = [str(i) for i in cache.ids]
    seen = {i for i, c in zip(ids, cache.content, strict=True) if c in _train_content()}
    split = "train" if cache.labels is not None else "test"
    if split == "train" and fingerprint(ids) != card()["sample_fingerprint"]:
        scored = ids if rows is None else [ids[i] for i in rows]
        from_pcam_train = (KAGGLE_ID.fullmatch(i) or i.startswith("train/") for i in scored)
        return None if any(from_pcam_train) else seen
    listed = _overlap()
    return seen | (set(listed.loc[listed["split"] == split, "id"]) & set(ids))


@cache
def _train_content() -> frozenset[str]:
    """Content hashes (:func:`pcamlib.cache.content_hash`) of the patches it trained on."""
    if not CONTENT_FILE.is_file():
        raise PretrainedError(f"{CONTENT_FILE}: its training patches' hashes are missing")
    with gzip.open(CONTENT_FILE, "rt") as lines:
        return frozenset(line.strip() for line in lines if line.strip())


KAGGLE_ID = re.compile(r"[0-9a-f]{40}")  # a Kaggle patch id: 40 hex digits


def pretrained_run(run_dir: str | os.PathLike, cache, **settings) -> Path | None:
    """A run directory for the shipped model on ``cache``, for the leaderboard and best_run.

    Its ``split.csv`` holds the protocol's val and test rows of ``cache`` (``settings``: the
    ``seed``, ``val_fraction`` and ``test_fraction`` of TrainConfig, defaults alike) with the
    rows the model trained on (:func:`seen_ids`) moved to ``train``, so no score counts them;
    its validation AUC is measured on those val rows. None, with a one-line warning, where the
    model's overlap with those rows is unknown (Kaggle training data; PCam train carved up by
    ``split="stratified"``); on PCam's own splits they are its valid and test, other slides.
    """
    import shutil
    import warnings

    from ..cache import atomic_path, atomic_write_text
    from ..config import TrainConfig
    from ..evaluate import predict_cache
    from ..metrics import binary_metrics
    from ..train import run_split

    run_dir = Path(run_dir)
    defaults = TrainConfig(recipe=card()["recipe"], init=NAME, data=str(cache.path))
    config = defaults.replace(out=str(run_dir), **settings)
    # The protocol's rows alone: nothing trains here (no batch to fit), and the rows it saw
    # are decided below, on the val and test rows only.
    _, val, test, protocol = run_split(config.replace(init=None, batch_size=1), cache, 1)
    seen = seen_ids(cache, np.concatenate([val, test]))
    if seen is None:
        warnings.warn(
            f"{cache.path}: which of these patches the pretrained model trained on is unknown "
            "(Kaggle training data holds twins of PCam's train split): not scored",
            stacklevel=2,
        )
        return None
    ids = pd.Series(cache.ids, dtype=object)
    val = val[~ids[val].isin(seen).to_numpy()]
    subset = pd.Series("", index=range(len(cache)), dtype=object)
    subset[val], subset[test] = "val", "test"
    subset[ids.isin(seen)] = "train"  # it trained on twins of these
    parts = pd.DataFrame({"id": ids, "label": cache.labels, "subset": subset})
    parts["split"], parts["protocol"] = config.split, protocol
    probs = predict_cache(load_pretrained(), cache, val, progress=False)
    val_auc = binary_metrics(cache.labels[val], probs, operating_point=None)["roc_auc"]
    history = card()["history"]
    state = {
        "epoch": len(history),
        "best_epoch": card()["best_epoch"],
        "best_val_auc": val_auc,
        "history": history,
        "train_rows": card()["data"]["train_rows"],
        "seen_rows": len(seen),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "best.keras") as tmp:
        shutil.copyfile(MODEL_FILE, tmp)
    atomic_write_text(run_dir / "config.json", config.to_json())
    atomic_write_text(run_dir / "split.csv", parts[parts.subset != ""].to_csv(index=False))
    atomic_write_text(run_dir / "state.json", json.dumps(state, indent=1))
    return run_dir


def best_or_pretrained(runs_dir: str | os.PathLike, data_dir: str | os.PathLike) -> Path:
    """The run under ``runs_dir`` with the best validation AUC; with none yet (a fresh clone),
    the shipped model, so 04 can submit without training: as a scored run on ``data_dir``
    where its overlap is known, else its file, unscored (:func:`pretrained_run` says why).
    Kaggle's test set comes from PCam's valid and test splits, which it never trained on."""
    from ..cache import load_patches
    from ..evaluate import best_run

    runs_dir = Path(runs_dir)
    if not any(runs_dir.glob("*/state.json")):
        cache = load_patches(data_dir, "train", progress=False)
        if pretrained_run(runs_dir / NAME, cache) is None:
            return MODEL_FILE
    return best_run(runs_dir)
