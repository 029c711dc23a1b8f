"""Every notebook's set-up cell, run the way a fresh Colab runtime runs it.

The kernel's Python has the project's dependencies but not pcamlib, its working folder is an
empty ``/content``-like folder, ``google.colab`` is importable, and the clone URL points at a
local git repository of this working tree. The set-up cell must clone, install and import
pcamlib in that same kernel, without a restart; the notebook's import cell must then run.
The cell itself stays short (at most 8 lines): it runs ``pcamlib/notebook.py`` from the
clone before pcamlib is importable, so that module may import only the standard library.
"""

from __future__ import annotations

import ast
import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from notebooks.series import SETUP_CELL, notebook_paths, repository_url
from pcamlib.config import REPO_ROOT

NOTEBOOKS = notebook_paths(REPO_ROOT / "notebooks")
FAKE_COLAB = {  # what the set-up and data cells may touch on Colab
    "google/colab/__init__.py": "",
    "google/colab/userdata.py": (
        "class SecretNotFoundError(Exception):\n    pass\n\n\n"
        "def get(name):\n    raise SecretNotFoundError(name)\n"
    ),
    "google/colab/drive.py": "def mount(path):\n    raise RuntimeError('no Drive in tests')\n",
}


@pytest.fixture(scope="session")
def source_repo(tmp_path_factory) -> Path:
    """A git repository holding this working tree (tracked and untracked, not ignored files)."""
    repo = tmp_path_factory.mktemp("origin") / "pcamlib"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        if (REPO_ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, repo / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run([*git, *args], cwd=repo, check=True)
    return repo


def fresh_kernel(root: Path, monkeypatch) -> Path:
    """A kernelspec 'fresh' whose Python sees the dependencies but not pcamlib; its cwd."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    own_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Path lines only: the dev venv's .pth files (pcamlib's editable finder) are not run.
    (Path(own_site) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    fake = root / "fake-colab"
    for name, text in FAKE_COLAB.items():
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_text(text)
    spec = root / "jupyter" / "kernels" / "fresh"
    spec.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "fresh", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(root / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(fake))
    monkeypatch.setenv("PCAM_OUT", str(root / "outputs"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no downloads: the dependencies are all there
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # pip's spelling of --no-build-isolation
    for name in ("PCAM_HOME", "PCAM_DATA", "PCAM_CACHE_DIR", "VIRTUAL_ENV"):
        monkeypatch.delenv(name, raising=False)
    content = root / "content"
    content.mkdir()
    return content


def setup_cells(path: Path, origin: Path) -> tuple[str, str]:
    """The notebook's set-up cell (clone URL → ``origin``) and its import cell."""
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    url = repository_url(REPO_ROOT / "pyproject.toml")
    setup = cells[0].source
    assert setup == SETUP_CELL.format(repo=url), f"{path.name}: set-up cell out of sync (make sync)"
    return setup.replace(f'"{url}.git"', f'"file://{origin}"'), cells[1].source


def run_cells(sources: list[str], cwd: Path) -> list[str]:
    """Execute ``sources`` in one new 'fresh' kernel; the text each cell printed."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    NotebookClient(
        notebook, timeout=600, kernel_name="fresh", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return [
        "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        for cell in notebook.cells
    ]


def test_the_set_up_cell_is_at_most_8_lines_and_ends_with_start():
    cell = SETUP_CELL.format(repo=repository_url(REPO_ROOT / "pyproject.toml"))
    lines = cell.splitlines()
    assert len(lines) <= 8, f"the set-up cell has {len(lines)} lines:\n{cell}"
    assert lines[-1] == "S = start(home, outputs=OUTPUTS, backend=BACKEND)"
    # the three values a user edits
    assert 'OUTPUTS, BACKEND, REPO = "", "", "https://github.com/' in cell


def test_the_notebook_module_imports_only_the_standard_library_at_module_level():
    """The set-up cell runs this file with runpy where pcamlib (and maybe nbformat) is missing."""
    tree = ast.parse((REPO_ROOT / "pcamlib" / "notebook.py").read_text())
    names = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    names |= {
        "." if n.level else n.module.split(".")[0]  # a relative import is pcamlib itself
        for n in tree.body
        if isinstance(n, ast.ImportFrom)
    }
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_setup_cell_installs_pcamlib_in_a_fresh_colab_like_kernel(
    path, source_repo, tmp_path, monkeypatch
):
    content = fresh_kernel(tmp_path, monkeypatch)
    setup, imports = setup_cells(path, source_repo)
    where = "import pcamlib; print('pcamlib at', pcamlib.__file__)"
    missing = "import importlib.util; print('before:', importlib.util.find_spec('pcamlib'))"
    printed = run_cells([missing, setup, imports, where, setup, where], content)

    assert printed[0].strip() == "before: None"  # the kernel really starts without pcamlib
    assert "installing it from" in printed[1]  # pcamlib was missing, so the cell installed it
    assert "data: sample (1,600 train / 29 test patches)" in printed[1]
    assert "mode: smoke" in printed[1] and "precision:" in printed[1]
    installed = printed[3].split("pcamlib at ", 1)[1].strip()
    assert installed.startswith(str(tmp_path / "venv")), installed  # pip installed it there
    assert (content / "pcamlib" / "data" / "sample" / "train_labels.csv").is_file()
    assert printed[5] == printed[3]  # the second run changed nothing: no new clone or install
    assert printed[4].count("data: sample") == 1 and "installing" not in printed[4]
