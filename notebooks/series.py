"""The notebook series, run or synced: ``python notebooks/series.py [--sync] [PATH]`` runs the
notebooks in place, or rewrites their set-up cells and badges from pyproject's ``Repository``
URL, the one place a fork edits. Project tooling (``make run``, ``make sync``, conftest.py), not
part of pcamlib; it imports no pcamlib.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
# Every notebook's first code cell (at most 8 lines): it finds the enclosing clone or clones REPO
# (to /tmp on Kaggle, whose working folder is kept output), then importable_start() from it.
SETUP_CELL = """\
import os, pathlib, runpy  # noqa: E401, I001  (OUTPUTS: "drive" or a folder; BACKEND: "jax")

OUTPUTS, BACKEND, REPO = "", "", "{repo}.git"  # defaults: outputs/, TF
base = pathlib.Path("/tmp" if os.path.isdir("/kaggle/working") else ".").resolve()
home = next((p for p in (base, *base.parents) if (p / "data/sample").is_dir()), base / "pcamlib")
home.exists() or get_ipython().system(f'git clone -q --depth 1 {{REPO}} "{{home}}"')  # no clone yet
start = runpy.run_path(f"{{home}}/pcamlib/notebook.py")["importable_start"](home)  # pip if needed
S = start(home, outputs=OUTPUTS, backend=BACKEND)"""

BADGES = (
    "[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    "(https://colab.research.google.com/github/{slug}/blob/main/notebooks/{name}) "
    "[![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)]"
    "(https://kaggle.com/kernels/welcome?src={repo}/blob/main/notebooks/{name})"
)
BADGE_LINE = re.compile(r"^\[!\[Open in Colab\].*$", re.MULTILINE)


def repository_url(pyproject: str | Path) -> str:
    """``[project.urls] Repository`` of pyproject.toml, e.g. https://github.com/pcamlib/pcamlib."""
    text = Path(pyproject).read_text()
    match = re.search(r'^Repository\s*=\s*"(https://github\.com/[^"]+?)/?"', text, re.M)
    if match is None:
        raise SystemExit(f'{pyproject}: no [project.urls] Repository = "https://github.com/…"')
    return match[1]


def notebook_paths(folder: str | Path) -> list[Path]:
    """The series' notebooks in order; a single notebook's path gives just that one."""
    if Path(folder).is_file():
        return [Path(folder)]
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise SystemExit(f"{folder}: no NN_*.ipynb notebooks found")
    return paths


def sync_series(folder: str | Path) -> list[str]:
    """Rewrite the set-up cell and badges of every notebook in ``folder`` from the Repository
    URL of the pyproject.toml beside it; the names of those that changed."""
    repo, changed = repository_url(Path(folder).resolve().parent / "pyproject.toml"), []
    slug = repo.removeprefix("https://github.com/")
    for path in notebook_paths(folder):
        notebook = nbformat.read(path, as_version=4)
        title, setup = notebook.cells[0], notebook.cells[1]
        badges = BADGES.format(slug=slug, repo=repo, name=path.name)
        new = BADGE_LINE.sub(badges, title.source), SETUP_CELL.format(repo=repo)
        if (title.source, setup.source) != new:
            title.source, setup.source = new
            nbformat.write(notebook, path)
            changed.append(path.name)
    return changed


def quiet_kernels() -> None:
    """Point $IPYTHONDIR at kernels that keep TensorFlow's C++ log lines out of stored outputs
    (and ``--nbval`` comparisons): ipykernel forwards fd output into cells unless told not to."""
    os.environ["IPYTHONDIR"] = tempfile.mkdtemp(prefix="pcam-ipython-")
    profile = Path(os.environ["IPYTHONDIR"], "profile_default")
    profile.mkdir()
    (profile / "ipython_kernel_config.py").write_text("c.IPKernelApp.capture_fd_output = False\n")


def run_series(folder: str | Path, timeout: int = 3600) -> None:
    """Run the notebooks of ``folder`` (or one notebook) in place, each from its folder; a
    failing cell stops the series, naming notebook and cell."""
    import nbclient

    quiet_kernels()
    sync_series(folder if Path(folder).is_dir() else Path(folder).parent)
    for path in notebook_paths(folder):
        notebook, began = nbformat.read(path, as_version=4), time.perf_counter()
        print(f"running {path} …", flush=True)
        try:  # no per-cell timestamps: a rerun leaves only real changes
            options = dict(timeout=timeout, kernel_name="python3", record_timing=False)
            nbclient.execute(notebook, cwd=str(path.parent), **options)
        except nbclient.exceptions.CellExecutionError as exc:
            failed = f"{path}: a cell failed (outputs saved in the notebook)"
            raise SystemExit(f"{failed}\n{exc}") from None
        finally:
            nbformat.write(notebook, path)
        print(f"  done in {time.perf_counter() - began:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    about = "Run the notebook series in order, in place."
    parser = argparse.ArgumentParser("python notebooks/series.py", description=about)
    parser.add_argument("path", nargs="?", default=str(HERE), help="the folder, or one notebook")
    parser.add_argument("--sync", action="store_true", help="only rewrite set-up cells and badges")
    args = parser.parse_args(argv)
    if not Path(args.path).exists():
        parser.error(f"{args.path}: no such folder or notebook")
    if args.sync:
        print("synced:", ", ".join(sync_series(args.path)) or "nothing to change")
    else:
        run_series(args.path)


if __name__ == "__main__":
    main()
