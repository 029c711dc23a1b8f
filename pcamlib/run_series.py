"""Run the series' notebooks in order, in place, and keep their set-up cells in sync.

``python -m pcamlib.run_series notebooks`` (``make run``; or one notebook's path) runs each
notebook in a fresh kernel from its own folder and stores its outputs; a failing cell stops the
series, naming notebook and cell. ``--sync`` (``make sync``) writes every notebook's set-up cell
and Colab/Kaggle badges from :data:`SETUP_CELL` and ``[project.urls] Repository`` in
``pyproject.toml``: the one place a fork edits.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

# The first code cell of every notebook. It must work where pcamlib is not installed yet, so
# it uses only the standard library until pcamlib is importable, then makes one call.
SETUP_CELL = """\
# Set-up, the same in every notebook: where pcamlib is not importable (a fresh Colab or Kaggle
# runtime, a Jupyter outside the project's venv) it installs it from the enclosing clone, or
# clones REPO first. No restart needed; running it again is harmless. `make sync` writes REPO.
import importlib.util, os, pathlib, sys  # noqa: E401, I001

OUTPUTS = ""  # "" = the project's outputs/; "drive" (Colab) or a folder: kept across sessions
REPO = "{repo}.git"
python, here = sys.executable, pathlib.Path.cwd().resolve()
home = next((p for p in (here, *here.parents) if (p / "data" / "sample").is_dir()), None)
if home is None:  # not inside a clone (Colab, Kaggle): clone beside the working folder
    home = pathlib.Path("/tmp" if os.path.isdir("/kaggle/working") else here) / "pcamlib"
    if not (home / "pyproject.toml").is_file():
        !git clone -q --depth 1 {{REPO}} "{{home}}"
if getattr(importlib.util.find_spec("pcamlib"), "origin", None) is None:  # not installed
    !"{{python}}" -m pip install -q "{{home}}"
    importlib.invalidate_caches()
from pcamlib.notebook import start  # noqa: E402

S = start(home, outputs=OUTPUTS)"""

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
