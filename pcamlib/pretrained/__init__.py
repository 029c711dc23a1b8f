"""The shipped model: ``pcam-cpu`` trained on 20,000 PCam *train* patches, usable offline;
beside it ``card.json`` (how it was made and scores), its training patches' hashes and the
sample's ids with a twin among them (``benchmarks/overlap.py``): no score of it counts those."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import warnings
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import atomic_path, atomic_write_text, load_patches

NAME = "pretrained"  # what --model and --init accept for this model
HERE = Path(__file__).resolve().parent
MODEL_FILE = HERE / "pcam-cpu.keras"
OVERLAP_FILE = HERE / "sample_overlap.csv"


class PretrainedError(FileNotFoundError):
    """The shipped model file is missing or unreadable (one line naming the file)."""


def is_pretrained(model: str | os.PathLike | None) -> bool:
    """``model`` names the shipped model: ``"pretrained"`` or the path of its file."""
    return model is not None and (str(model) == NAME or Path(model).resolve() == MODEL_FILE)


def _shipped(path: Path, what: str) -> Path:
    if not path.is_file():
        raise PretrainedError(f"{path}: {what} missing (reinstall)")
    return path


def load_pretrained():
    """The shipped PCamNet (raw uint8 96×96 patches in, P(tumour) out), with no network."""
    import keras

    path = _shipped(MODEL_FILE, "the pretrained model file is")
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PretrainedError(f"{path}: not a readable .keras model ({reason})") from None


@cache
def card() -> dict:
    """How the shipped model was made and how it scores (``card.json``)."""
    return json.loads(_shipped(HERE / "card.json", "the pretrained model's card is").read_text())


def seen_mask(cache, rows=None) -> np.ndarray | None:
    """Which rows of ``cache`` hold a patch the shipped model trained on (by content hash; the
    sample's twins by ``sample_overlap.csv``); None where ``rows`` (to be scored) hold other
    Kaggle or PCam training data: no list names their twins (their test sets are other slides)."""
    from ..stream import fingerprint, read_overlap

    ids = pd.Series(cache.ids, dtype=str)
    seen = pd.Series(cache.content, dtype=object).isin(_train_content()).to_numpy()
    split = "train" if cache.labels is not None else "test"
    if split == "train" and fingerprint(ids) != card()["sample_fingerprint"]:
        # Kaggle ids (40 hex digits) and PCam's train/N are PCam train: twins no list names.
        scored = ids if rows is None else ids.iloc[rows]
        return None if scored.str.fullmatch("[0-9a-f]{40}|train/.*").any() else seen
    listed = read_overlap(_shipped(OVERLAP_FILE, "the sample's overlap list is"), split)
    return seen | ids.isin(listed).to_numpy()


@cache
def _train_content() -> frozenset[str]:
    """Content hashes (:func:`pcamlib.cache.content_hash`) of the patches it trained on."""
    path = _shipped(HERE / "train_content.txt.gz", "its training patches' hashes are")
    return frozenset(gzip.decompress(path.read_bytes()).decode().split())


def pretrained_run(run_dir: str | os.PathLike, cache) -> Path | None:
    """A run directory of the shipped model on ``cache`` for the leaderboard: the protocol's val
    and test rows less its twins (:func:`seen_mask`, its ``train``); None, warned, if unknown."""
    from ..config import TrainConfig
    from ..evaluate import evaluate
    from ..stream import run_split, write_split

    run_dir, made = Path(run_dir), card()
    config = TrainConfig.from_recipe(
        made["recipe"], init=NAME, data=str(cache.path), out=str(run_dir)
    )
    # The protocol's rows alone (nothing trains here); the rows it saw are decided below.
    _, val, test, protocol = run_split(config.replace(init=None, batch_size=1), cache, 1)
    if (seen := seen_mask(cache, [*val, *test])) is None:
        unknown = "which of these patches the pretrained model trained on is unknown"
        warnings.warn(f"{cache.path}: {unknown} (Kaggle train data): not scored", stacklevel=2)
        return None
    rows = (seen.nonzero()[0], val[~seen[val]], test[~seen[test]])
    auc = evaluate(load_pretrained(), cache, rows[1], progress=False)[0]["roc_auc"]
    state = {"epoch": len(made["history"]), **{k: made[k] for k in ("best_epoch", "history")}}
    state |= {"best_val_auc": auc, "train_rows": made["data"]["train_rows"]}  # not in split.csv
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "best.keras") as tmp:
        shutil.copyfile(MODEL_FILE, tmp)
    atomic_write_text(run_dir / "config.json", config.to_json())
    write_split(run_dir, config, cache, rows, protocol)
    atomic_write_text(run_dir / "state.json", json.dumps(state, indent=1))
    return run_dir


def best_or_pretrained(runs_dir: str | os.PathLike, data_dir: str | os.PathLike) -> Path:
    """The run under ``runs_dir`` with the best validation AUC; with none yet, the shipped model
    (a scored run on ``data_dir`` where :func:`pretrained_run` can make one, else its file)."""
    from ..evaluate import best_run

    runs_dir = Path(runs_dir)
    if not any(runs_dir.glob("*/state.json")):
        if pretrained_run(runs_dir / NAME, load_patches(data_dir, "train", progress=False)) is None:
            return MODEL_FILE
    return best_run(runs_dir)
