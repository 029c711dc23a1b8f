"""What every notebook's set-up does: one status line, data and outputs where the user is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import keras
import nbformat
import pytest

from notebooks.series import SETUP_CELL, main, repository_url, sync_series
from pcamlib import config
from pcamlib.cache import default_cache_dir
from pcamlib.config import REPO_ROOT
from pcamlib.notebook import Settings, settings, start

SOURCE = SimpleNamespace(name="kaggle-train:/data")  # all default_cache_dir reads of a source


@pytest.fixture(autouse=True)
def environment_restored():
    """start() sets PCAM_HOME/PCAM_OUT/PCAM_MODE for the notebook: undo it after each test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_start_prints_one_status_line_with_data_device_precision_and_mode(capsys, monkeypatch):
    monkeypatch.setenv("PCAM_SMOKE", "1")
    s = start(REPO_ROOT)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [
        "data: sample (1,600 train / 29 test patches) · device: CPU · "
        f"backend: {keras.backend.backend()} · precision: float32 · mode: smoke"
    ]
    assert s.data_dir == REPO_ROOT / "data" / "sample" and s.recipe == "pcam-cpu"


def test_gpu_mode_on_a_cpu_takes_every_gpu_decision_and_says_it_was_forced(capsys, monkeypatch):
    monkeypatch.setenv("PCAM_SMOKE", "1")
    s = start(REPO_ROOT, mode="gpu")
    line = capsys.readouterr().out.strip()
    assert os.environ["PCAM_MODE"] == "gpu"
    assert "device: CPU" in line and "precision: mixed_bfloat16" in line
    assert line.endswith("mode: smoke, GPU path forced (PCAM_MODE)")
    assert (s.recipe, s.init, s.cpu_budget(8), s.epochs(5, cpu=1)) == ("pcam-gpu", None, None, 1)
    config = s.train_config(recipe=s.recipe)
    assert (config.augment_on, config.steps_per_epoch, config.epochs) == ("model", 3, 1)
    monkeypatch.setenv("PCAM_SMOKE", "0")
    assert settings().epochs(5, cpu=1) == 5  # the GPU's count, not the CPU's


def test_a_mistyped_mode_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("PCAM_MODE", "tpu9")
    with pytest.raises(ValueError, match=r"^PCAM_MODE=tpu9: must be one of gpu, cpu"):
        settings()


def test_the_backend_cannot_change_once_keras_runs():
    with pytest.raises(ValueError, match=r'^backend="torch": must be one of tensorflow, jax'):
        start(REPO_ROOT, backend="torch")
    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    with pytest.raises(RuntimeError, match=f'backend="{other}": Keras already runs on'):
        start(REPO_ROOT, backend=other)


def test_the_recipe_and_mode_follow_the_device():
    base = dict(data_dir=REPO_ROOT, out_dir=REPO_ROOT, weights=None)
    small = dict(steps_per_epoch=None, eval_limit=None)
    gpu = Settings(smoke=False, accelerator="gpu", **base, **small)
    cpu = Settings(smoke=False, accelerator="cpu", **base, **small)
    assert (gpu.recipe, gpu.mode, cpu.recipe, cpu.mode) == ("pcam-gpu", "GPU", "pcam-cpu", "CPU")
    assert Settings(smoke=True, accelerator="gpu", **base, **small).mode == "smoke"


def test_kaggle_input_is_found_and_everything_written_goes_to_kaggle_working(
    tmp_path, monkeypatch, capsys
):
    kaggle_input, working = tmp_path / "input" / "hcd", tmp_path / "working"
    (kaggle_input / "test").mkdir(parents=True)
    (kaggle_input / "train_labels.csv").write_text("id,label\na,0\nb,1\nc,1\n")
    (kaggle_input / "test" / "x.tif").write_bytes(b"")
    monkeypatch.setattr(config, "KAGGLE_INPUT", kaggle_input)
    monkeypatch.setattr(config, "KAGGLE_WORKING", working)
    for name in ("PCAM_OUT", "PCAM_DATA", "PCAM_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PCAM_SMOKE", "0")
    monkeypatch.setenv("PCAM_HOME", str(tmp_path / "clone"))  # no data/full there
    s = start()
    assert s.data_dir == kaggle_input
    assert s.out_dir == working / "outputs" and "PCAM_CACHE_DIR" not in os.environ
    assert default_cache_dir(SOURCE, "train", kaggle_input).parent == working / ".pcam-cache"
    assert "data: Kaggle input (3 train / 1 test patches)" in capsys.readouterr().out


def test_persistent_outputs_are_one_setting(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PCAM_CACHE_DIR", raising=False)
    monkeypatch.setenv("PCAM_SMOKE", "0")
    s = start(REPO_ROOT, outputs=str(tmp_path / "kept"))
    assert s.out_dir == tmp_path / "kept"
    assert default_cache_dir(SOURCE, "train", None).parent == tmp_path / "kept" / "cache"
    # The CLI run from a notebook (a child process) packs into the same folder.
    source = "types.SimpleNamespace(name='kaggle-train:/data')"
    code = f"import types, pcamlib.cache as c; print(c.default_cache_dir({source}, 'x', None))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.stdout.startswith(f"{tmp_path / 'kept' / 'cache' / 'x-'}"), child.stderr
    with pytest.raises(RuntimeError, match='outputs="drive" needs Google Colab'):
        start(REPO_ROOT, outputs="drive")


def test_every_notebook_carries_the_synced_set_up_cell_and_badges():
    url = repository_url(REPO_ROOT / "pyproject.toml")
    for path in sorted((REPO_ROOT / "notebooks").glob("0*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        assert cells[1].source == SETUP_CELL.format(repo=url), f"{path.name}: run make sync"
        slug = url.removeprefix("https://github.com/")
        assert f"colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}" in (
            cells[0].source
        )


def test_a_fork_edits_the_url_once_and_sync_rewrites_cells_and_badges(tmp_path):
    shutil.copytree(REPO_ROOT / "notebooks", tmp_path / "notebooks")
    old = repository_url(REPO_ROOT / "pyproject.toml")
    text = (REPO_ROOT / "pyproject.toml").read_text().replace(old, "https://github.com/me/fork")
    (tmp_path / "pyproject.toml").write_text(text)
    changed = sync_series(tmp_path / "notebooks")
    assert len(changed) == len(list((REPO_ROOT / "notebooks").glob("0*.ipynb")))
    for path in (tmp_path / "notebooks").glob("0*.ipynb"):
        raw = path.read_text()
        assert old.removeprefix("https://") not in raw
        assert "https://github.com/me/fork.git" in raw and "github/me/fork/blob/main" in raw
    assert sync_series(tmp_path / "notebooks") == []  # idempotent


def test_make_sync_and_a_mistyped_path(tmp_path, capsys):
    shutil.copytree(REPO_ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    script = [sys.executable, REPO_ROOT / "notebooks" / "series.py", "--sync"]  # as make sync
    done = subprocess.run([*script, tmp_path / "notebooks"], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "synced: nothing to change\n"), done.stderr
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "notebook")])
    assert exc.value.code == 2
    assert "notebook: no such folder or notebook" in capsys.readouterr().err
