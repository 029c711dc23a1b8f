"""Run the series' notebooks in order, in place, and keep their set-up cells in sync.

``python -m pcamlib.run_series notebooks`` (``make run``; or one notebook's path) runs each
notebook in a fresh kernel from its own folder and stores its outputs; a failing cell stops the
series, naming notebook and cell. ``--sync`` (``make sync``) writes every notebook's set-up cell
and Colab/Kaggle badges from :data:`SETUP_CELL` and ``[project.urls] Repository`` in
``pyproject.toml``: the one place a fork edits. The set-up cell runs this file from the clone
(:func:`importable_start`) before pcamlib may be importable, so its module-level imports are
the standard library only.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

# The first code cell of every notebook, at most 8 lines. Where pcamlib is not importable yet it
# finds the enclosing clone (or clones REPO: to /tmp on Kaggle, whose working folder is kept
# output; into the working folder elsewhere), then runs this file from that clone with runpy, so
# this module imports only the standard library at module level: importable_start() installs
# pcamlib with a plain pip install where needed and returns pcamlib.notebook.start.
SETUP_CELL = """\
import os, pathlib, runpy  # noqa: E401, I001  (OUTPUTS: "drive" or a folder; BACKEND: "jax")

OUTPUTS, BACKEND, REPO = "", "", "{repo}.git"  # defaults: outputs/, TF
base = pathlib.Path("/tmp" if os.path.isdir("/kaggle/working") else ".").resolve()
home = next((p for p in (base, *base.parents) if (p / "data/sample").is_dir()), base / "pcamlib")
home.exists() or get_ipython().system(f'git clone -q --depth 1 {{REPO}} "{{home}}"')  # no clone yet
start = runpy.run_path(f"{{home}}/pcamlib/run_series.py")["importable_start"](home)  # pip if needed
S = start(home, outputs=OUTPUTS, backend=BACKEND)"""

BADGES = (
    "[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    "(https://colab.research.google.com/github/{slug}/blob/main/notebooks/{name}) "
    "[![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)]"
    "(https://kaggle.com/kernels/welcome?src={repo}/blob/main/notebooks/{name})"
)
BADGE_LINE = re.compile(r"^\[!\[Open in Colab\].*$", re.MULTILINE)


def repository_url(pyproject: str | Path = "pyproject.toml") -> str:
    """``[project.urls] Repository`` of pyproject.toml, e.g. https://github.com/pcamlib/pcamlib."""
    match = re.search(
        r'^Repository\s*=\s*"(https://github\.com/[^"]+?)/?"', Path(pyproject).read_text(), re.M
    )
    if match is None:
        raise SystemExit(f'{pyproject}: no [project.urls] Repository = "https://github.com/…"')
    return match.group(1)


def sync_series(folder: str | Path = "notebooks", pyproject: str | Path | None = None) -> list[str]:
    """Rewrite the set-up cell and badges of every notebook in ``folder``; the changed names."""
    import nbformat

    folder = Path(folder)
    repo = repository_url(pyproject or folder.resolve().parent / "pyproject.toml")
    slug = repo.removeprefix("https://github.com/")
    changed = []
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


def importable_start(home: str | Path):
    """``pcamlib.notebook.start``, after a plain ``pip install home`` where pcamlib is missing.

    The set-up cell calls this through :func:`runpy.run_path` before pcamlib may be importable.
    A plain (not editable) install is importable in the running kernel at once: no restart. A
    clone folder named ``pcamlib`` in the working folder is only a namespace package (no
    origin) and does not count; once pcamlib is installed, running the cell again installs
    nothing.
    """
    import importlib
    import importlib.util
    import subprocess
    import sys

    if getattr(importlib.util.find_spec("pcamlib"), "origin", None) is None:
        print(f"pcamlib is not importable here: installing it from {home} …", flush=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", str(home)]
        done = subprocess.run(pip, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(pip)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        importlib.invalidate_caches()
    return importlib.import_module("pcamlib.notebook").start


def notebook_paths(folder: str | Path) -> list[Path]:
    """The series' notebooks in order; a single notebook's path gives just that one."""
    if Path(folder).is_file():
        return [Path(folder)]
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise SystemExit(f"{folder}: no NN_*.ipynb notebooks found")
    return paths


def quiet_kernels() -> Path:
    """Make notebook kernels leave native (C++) stderr alone; returns the IPython dir used.

    ipykernel forwards file-descriptor output into cell outputs by default, so TensorFlow's
    C++ log lines would land in stored outputs and break every ``pytest --nbval`` comparison.
    """
    ipython_dir = Path(tempfile.mkdtemp(prefix="pcam-ipython-"))
    profile = ipython_dir / "profile_default"
    profile.mkdir()
    (profile / "ipython_kernel_config.py").write_text("c.IPKernelApp.capture_fd_output = False\n")
    os.environ["IPYTHONDIR"] = str(ipython_dir)
    return ipython_dir


def run_series(folder: str | Path, timeout: int = 3600) -> list[tuple[str, float]]:
    """Execute the notebooks of ``folder`` (or one notebook) in place; (name, seconds) each."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    quiet_kernels()
    sync_series(folder if Path(folder).is_dir() else Path(folder).parent)
    times = []
    for path in notebook_paths(folder):
        notebook = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        print(f"running {path} …", flush=True)
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,  # no per-cell timestamps: a rerun leaves only real changes
            resources={"metadata": {"path": str(path.parent)}},
        )
        try:
            client.execute()
        except CellExecutionError as exc:
            nbformat.write(notebook, path)
            message = f"{path}: a cell failed (outputs saved in the notebook)\n{exc}"
            raise SystemExit(message) from None
        nbformat.write(notebook, path)
        times.append((path.name, time.perf_counter() - start))
        print(f"  done in {times[-1][1]:.0f} s", flush=True)
    return times


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pcamlib.run_series", description=__doc__.splitlines()[0]
    )
    parser.add_argument("path", nargs="?", default="notebooks", help="the folder, or one notebook")
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
