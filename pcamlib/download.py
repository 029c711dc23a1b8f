"""Fetch the full competition data with the Kaggle CLI (never at import or test time).

The sample in ``data/sample`` makes every notebook run without it; the full 220k-patch
training set goes to ``data/full`` (git-ignored), where the notebooks pick it up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from .sources import DataError

COMPETITION = "histopathologic-cancer-detection"


def kaggle_credentials() -> str | None:
    """Where credentials were found (env vars or kaggle.json), or None."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY environment variables"
    config = os.environ.get("KAGGLE_CONFIG_DIR")
    candidates = [Path(config)] if config else []
    candidates += [Path.home() / ".kaggle", Path.home() / ".config" / "kaggle"]
    for folder in candidates:
        if (folder / "kaggle.json").is_file():
            return str(folder / "kaggle.json")
    return None


def download_competition(out: str | os.PathLike = "data/full") -> Path:
    """Download and unzip the competition into ``out`` (train/, test/, train_labels.csv…)."""
    out = Path(out)
    if kaggle_credentials() is None:
        raise DataError(
            "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (on Colab: add them as "
            "Colab secrets) or put kaggle.json in ~/.kaggle/ (Kaggle → Settings → Create New "
            "Token), and accept the competition rules on its Kaggle page"
        )
    if shutil.which("kaggle") is None:
        raise DataError("the kaggle command is not installed: pip install 'pcamlib[kaggle]'")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["kaggle", "competitions", "download", "-c", COMPETITION, "-p", str(out)], check=True
    )
    archive = out / f"{COMPETITION}.zip"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(out)
    archive.unlink()
    return out


def credentials_from_colab_secrets() -> bool:
    """Copy KAGGLE_USERNAME/KAGGLE_KEY from Colab secrets into the environment (never to disk)."""
    try:
        from google.colab import userdata  # only importable on Colab
    except ImportError:
        return False
    try:
        os.environ["KAGGLE_USERNAME"] = userdata.get("KAGGLE_USERNAME")
        os.environ["KAGGLE_KEY"] = userdata.get("KAGGLE_KEY")
    except Exception:  # secret missing or notebook access not granted
        return False
    return True
