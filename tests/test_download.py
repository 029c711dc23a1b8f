"""Getting the full competition data: credentials, atomic unpacking, resumption, no leaks."""

from __future__ import annotations

import io
import sys
import types
import zipfile
from pathlib import Path

import pytest

from pcamlib import kaggle
from pcamlib.config import project_root, resolve_out
from pcamlib.kaggle import download_competition, get_full_data, kaggle_credentials
from pcamlib.sources import DataError

SECRET = "s3cr3t-kaggle-key-0123456789"
# A stand-in for the Kaggle CLI: checks it got credentials, then writes the archive it is
# told to (a good zip, or garbage to mimic a truncated download), one per call.
FAKE_KAGGLE = """#!{python}
import os, sys, pathlib
assert os.environ.get("KAGGLE_KEY") or os.environ.get("KAGGLE_CONFIG_DIR"), "no credentials"
queue = sorted(pathlib.Path({queue!r}).glob("*.zip"))
if not queue:
    sys.exit(1)
out = pathlib.Path(sys.argv[sys.argv.index("-p") + 1])
queue[0].replace(out / "histopathologic-cancer-detection.zip")
print("Downloading histopathologic-cancer-detection.zip 100%")
"""


def competition_zip(n_train: int = 3) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("train_labels.csv", "id,label\n" + "".join(f"t{i},0\n" for i in range(n_train)))
        for i in range(n_train):
            zf.writestr(f"train/t{i}.tif", b"II*\0fake")
        zf.writestr("test/x.tif", b"II*\0fake")
        zf.writestr("sample_submission.csv", "id,label\nx,0\n")
    return buffer.getvalue()


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    return tmp_path


@pytest.fixture
def fake_kaggle(no_credentials, monkeypatch):
    """Returns a function queueing archives for the fake CLI (served in order)."""
    root = no_credentials
    bin_dir, queue = root / "bin", root / "queue"
    bin_dir.mkdir()
    queue.mkdir()
    cli = bin_dir / "kaggle"
    cli.write_text(FAKE_KAGGLE.format(python=sys.executable, queue=str(queue)))
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)

    def serve(*archives: bytes) -> None:
        for i, data in enumerate(archives):
            (queue / f"{i:02d}.zip").write_bytes(data)

    return serve


def every_byte_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_without_credentials_the_series_goes_on_with_the_sample(no_credentials, capsys):
    out = no_credentials / "data" / "full"
    assert get_full_data(out) is None
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "KAGGLE_USERNAME" in printed[0] and "sample" in printed[0]
    with pytest.raises(DataError, match="no Kaggle credentials: add KAGGLE_USERNAME"):
        download_competition(out)
    assert not out.exists()


def test_credentials_come_from_the_environment_colab_secrets_or_kaggle_json(
    no_credentials, monkeypatch
):
    assert kaggle_credentials() is None
    userdata = types.SimpleNamespace(get=lambda name: {"KAGGLE_USERNAME": "u"}.get(name, SECRET))
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    assert kaggle_credentials()["KAGGLE_KEY"] == SECRET
    monkeypatch.delitem(sys.modules, "google.colab")
    folder = no_credentials / "home" / ".kaggle"
    folder.mkdir(parents=True)
    (folder / "kaggle.json").write_text("{}")
    assert kaggle_credentials()["KAGGLE_CONFIG_DIR"] == str(folder)
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    assert kaggle_credentials()["KAGGLE_KEY"] == SECRET


def test_kaggle_cli_1_8_tokens_count_as_credentials(no_credentials, monkeypatch):
    """KAGGLE_API_TOKEN (environment or Colab secret) and ~/.kaggle/access_token."""
    assert kaggle_credentials() is None
    token = no_credentials / "home" / ".kaggle" / "access_token"
    token.parent.mkdir(parents=True)
    token.write_text("\n")  # empty: not a credential
    assert kaggle_credentials() is None
    token.write_text(SECRET + "\n")
    assert "KAGGLE_API_TOKEN" not in kaggle_credentials()  # the CLI reads the file itself
    token.unlink()
    colab = types.ModuleType("google.colab")
    colab.userdata = types.SimpleNamespace(get=lambda name: {"KAGGLE_API_TOKEN": SECRET}[name])
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    assert kaggle_credentials()["KAGGLE_API_TOKEN"] == SECRET  # KeyError for the others
    monkeypatch.delitem(sys.modules, "google.colab")
    assert kaggle_credentials() is None
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    assert kaggle_credentials()["KAGGLE_API_TOKEN"] == SECRET


def test_a_relative_out_is_relative_to_the_project_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # e.g. notebooks/ after a %cd
    assert resolve_out("data/full") == project_root() / "data" / "full"
    assert resolve_out(tmp_path / "x") == tmp_path / "x"


def test_download_unpacks_atomically_and_leaks_no_secret(fake_kaggle, no_credentials, capfd):
    fake_kaggle(competition_zip())
    out = no_credentials / "data" / "full"
    assert get_full_data(out) == out
    assert sorted(p.name for p in out.iterdir()) == [
        "sample_submission.csv", "test", "train", "train_labels.csv"
    ]  # fmt: skip
    assert sorted(p.name for p in out.parent.iterdir()) == ["full"]  # no .partial/.download left
    printed = capfd.readouterr()
    assert SECRET not in printed.out + printed.err
    assert SECRET.encode() not in every_byte_under(no_credentials / "data")
    assert get_full_data(out) == out  # once there, nothing is fetched again


def test_an_interrupted_unpack_never_looks_complete_and_the_rerun_finishes(
    fake_kaggle, no_credentials, monkeypatch
):
    fake_kaggle(competition_zip(n_train=6))
    out = no_credentials / "data" / "full"
    real_extract, done = zipfile.ZipFile.extract, []

    def extract_then_die(self, member, path=None, pwd=None):
        if len(done) == 4:
            raise KeyboardInterrupt  # the user stops the cell mid-way
        done.append(member)
        return real_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", extract_then_die)
    with pytest.raises(KeyboardInterrupt):
        download_competition(out)
    assert not out.exists() and (out.parent / "full.partial").is_dir()
    assert (out.parent / "full.download" / f"{kaggle.COMPETITION}.zip").is_file()  # kept
    monkeypatch.setattr(zipfile.ZipFile, "extract", real_extract)
    assert download_competition(out) == out  # resumes from the downloaded archive
    assert len(list((out / "train").iterdir())) == 6
    assert sorted(p.name for p in out.parent.iterdir()) == ["full"]


def test_a_truncated_download_is_refused_by_name_and_fetched_again_on_a_rerun(
    fake_kaggle, no_credentials
):
    out = no_credentials / "data" / "full"
    fake_kaggle(b"PK\x03\x04 truncated", competition_zip())
    with pytest.raises(DataError, match="not a readable zip archive; rerun to fetch it"):
        download_competition(out)
    assert not out.exists() and not list((out.parent / "full.download").iterdir())
    assert download_competition(out) == out
    left = no_credentials / "data" / "again.download" / f"{kaggle.COMPETITION}.zip"
    left.parent.mkdir()
    left.write_bytes(b"PK\x03\x04 cut short")  # an interrupted earlier download
    fake_kaggle(competition_zip())
    assert download_competition(no_credentials / "data" / "again").is_dir()
