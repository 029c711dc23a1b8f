"""Fetch the full competition data with the Kaggle CLI (never at import or test time).

Notebooks run on the sample in ``data/sample``; the full set goes to ``data/full``
(git-ignored). Safe against interruption: the zip lands in ``data/full.download/`` (the CLI
skips a finished download; a broken one is fetched again), is unpacked into
``data/full.partial/`` and renamed to ``data/full`` only when complete. Credentials travel
only in the Kaggle CLI's environment: never printed, logged or written by pcamlib.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from .config import KAGGLE_INPUT, on_kaggle, project_root
from .sources import DataError

COMPETITION = "histopathologic-cancer-detection"
HOW_TO_ADD = (
    "add KAGGLE_USERNAME and KAGGLE_KEY as Colab secrets (key icon, left bar; values from "
    "Kaggle → Settings → Create New Token), or put kaggle.json in ~/.kaggle/, or set them in "
    "the environment, and accept the rules at kaggle.com/c/" + COMPETITION
)


def kaggle_credentials() -> dict[str, str] | None:
    """Environment for the Kaggle CLI, from the first source that has credentials, else None.

    Sources, in order: ``KAGGLE_USERNAME``/``KAGGLE_KEY`` in the environment, Colab secrets of
    the same names, ``kaggle.json`` (``$KAGGLE_CONFIG_DIR``, ``~/.kaggle``, ``~/.config/kaggle``).
    """
    env = dict(os.environ)
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return env
    try:
        from google.colab import userdata  # only importable on Colab

        secrets = {name: userdata.get(name) for name in ("KAGGLE_USERNAME", "KAGGLE_KEY")}
    except Exception:  # not Colab, a secret missing, or this notebook was not granted access
        secrets = {}
    if secrets and all(secrets.values()):
        return {**env, **secrets}
    config = env.get("KAGGLE_CONFIG_DIR")
    folders = [Path(config)] if config else []
    folders += [Path.home() / ".kaggle", Path.home() / ".config" / "kaggle"]
    for folder in folders:
        if (folder / "kaggle.json").is_file():
            return {**env, "KAGGLE_CONFIG_DIR": str(folder)}
    return None


def resolve_out(out: str | os.PathLike) -> Path:
    """A relative ``out`` is relative to the project root, wherever the command runs from."""
    out = Path(out).expanduser()
    return out if out.is_absolute() else project_root() / out


def download_competition(out: str | os.PathLike = "data/full", *, force: bool = False) -> Path:
    """Download and unpack the competition into ``out`` (train/, test/, train_labels.csv…).

    Returns at once when ``out`` already holds the unpacked data, unless ``force``.
    """
    from tqdm.auto import tqdm

    out = resolve_out(out)
    if (out / "train_labels.csv").is_file() and not force:
        return out
    env = kaggle_credentials()
    if env is None:
        raise DataError(f"no Kaggle credentials: {HOW_TO_ADD}")
    if shutil.which("kaggle") is None:
        raise DataError("the kaggle command is not installed: pip install 'pcamlib[kaggle]'")
    archive = _fetch_archive(out.with_name(out.name + ".download"), env)
    # Unzip into out.partial, then rename: `out` appears only whole.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted unpack starts over
    with zipfile.ZipFile(archive) as zf:
        for member in tqdm(zf.infolist(), desc="unpacking", unit="file", mininterval=1):
            zf.extract(member, partial)
    if not (partial / "train_labels.csv").is_file():
        raise DataError(f"{archive}: the archive has no train_labels.csv")
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    shutil.rmtree(archive.parent, ignore_errors=True)
    return out


def _fetch_archive(folder: Path, env: dict[str, str]) -> Path:
    """The competition zip in ``folder``, downloaded (with the CLI's progress bar) if needed."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{COMPETITION}.zip"
    if zipfile.is_zipfile(archive):  # a finished earlier download (False when missing)
        return archive
    for _ in range(2):
        command = ["kaggle", "competitions", "download", "-c", COMPETITION, "-p", str(folder)]
        done = subprocess.run(command, env=env)
        if done.returncode != 0:
            raise DataError(
                f"kaggle download failed (exit {done.returncode}); check the credentials and "
                f"that you accepted the rules at kaggle.com/c/{COMPETITION}; rerun to resume"
            )
        if zipfile.is_zipfile(archive):
            return archive
        archive.unlink(missing_ok=True)  # truncated: fetch it again, once
    raise DataError(f"{archive}: the download is not a readable zip archive twice in a row")


def get_full_data(out: str | os.PathLike = "data/full") -> Path | None:
    """The notebooks' one call: the full data in ``out`` when credentials exist, else None.

    Without credentials it prints how to add them, and the series goes on with the sample.
    """
    if on_kaggle():  # Kaggle Notebooks: the competition is attached as (read-only) input
        return KAGGLE_INPUT
    out = resolve_out(out)
    if (out / "train_labels.csv").is_file():
        return out
    if kaggle_credentials() is None:
        print(
            "No Kaggle credentials: the series uses the embedded sample. "
            f"To get the full data, {HOW_TO_ADD}."
        )
        return None
    return download_competition(out)
