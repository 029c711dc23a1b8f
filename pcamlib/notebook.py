"""The notebook series: every notebook's set-up (``S = start(…)``), and running it in order.

:func:`start` points the library at the clone and the outputs, keeps known noise out of the
notebook and prints one status line. ``python -m pcamlib.notebook notebooks`` (``make run``;
or one notebook's path) runs each notebook in a fresh kernel from its own folder and stores
its outputs; a failing cell stops the series, naming notebook and cell. ``--sync`` (``make
sync``) writes every notebook's set-up cell and Colab/Kaggle badges from :data:`SETUP_CELL`
and ``[project.urls] Repository`` in ``pyproject.toml``: the one place a fork edits. The
set-up cell runs this file from the clone before pcamlib may be importable, so its
module-level imports are the standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

# The first code cell of every notebook, at most 8 lines. Where pcamlib is not importable yet it
# finds the enclosing clone (or clones REPO: to /tmp on Kaggle, whose working folder is kept
# output; into the working folder elsewhere), then runs this file from that clone with runpy:
# importable_start() installs pcamlib with a plain pip install where needed.
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
DRIVE = Path("/content/drive")
BACKENDS = ("tensorflow", "jax")  # the Keras backends the series runs on
# TensorFlow's native start-up lines, written to fd 2 before its log level applies: absl
# info/warning lines and their banner, CPU-feature advice, and cuInit without an NVIDIA driver.
CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} |"
    r"To enable the following instructions:)"
)
NO_CUDA = re.compile(r"^E\d{4} .*failed call to cuInit")


def start(home=None, outputs: str = "", mode: str | None = None, backend: str = ""):
    """Point the library at the clone and the outputs, quiet known noise, print one status line.

    Args:
        home: the project's clone (with ``data/sample``); becomes ``$PCAM_HOME``.
        outputs: where runs, the packed cache and ``submission.csv`` go. ``""`` keeps
            ``$PCAM_OUT`` or the default (``outputs/`` of the project, ``/kaggle/working``
            on Kaggle); ``"drive"`` mounts Google Drive on Colab and uses
            ``MyDrive/pcamlib``, so a disconnect loses nothing and training resumes; any
            other value is a folder.
        mode: ``"gpu"`` or ``"cpu"`` takes that device's path whatever the device (becomes
            ``$PCAM_MODE``); ``"gpu"`` on a CPU rehearses a GPU run.
        backend: the Keras backend, ``"jax"`` or ``"tensorflow"``; ``""`` keeps
            ``$KERAS_BACKEND`` (TensorFlow when unset). Keras fixes it when it is first
            imported, so a change needs a fresh kernel.

    Returns the session's :class:`pcamlib.config.Settings`.
    """
    from .config import settings

    _use_backend(backend)
    if home is not None:
        os.environ["PCAM_HOME"] = str(Path(home).resolve())
    if outputs == "drive":
        outputs = _mount_drive()
    if mode is not None:
        os.environ["PCAM_MODE"] = mode
    if outputs:
        os.environ["PCAM_OUT"] = str(Path(outputs).expanduser())
    _quiet_noise()
    found = settings()
    if found.cache_dir is not None:  # load_patches (and the CLI) read it from here
        os.environ.setdefault("PCAM_CACHE_DIR", str(found.cache_dir))
    print(status_line(found))
    return found


def _mount_drive() -> str:
    try:
        from google.colab import drive  # only on Colab
    except ImportError:
        raise RuntimeError(
            'outputs="drive" needs Google Colab; elsewhere give a folder, e.g. outputs="~/pcam"'
        ) from None
    if not (DRIVE / "MyDrive").is_dir():
        drive.mount(str(DRIVE))
    return str(DRIVE / "MyDrive" / "pcamlib")


def _use_backend(name: str) -> None:
    """Set ``$KERAS_BACKEND`` while Keras is not imported yet; refuse a switch after that."""
    if not name:
        return
    if name not in BACKENDS:
        raise ValueError(f'backend="{name}": must be one of {", ".join(BACKENDS)} (or "")')
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise RuntimeError(
                f'backend="{name}": Keras already runs on {keras.backend.backend()} in this '
                "kernel; restart it and run the set-up cell first"
            )
    os.environ["KERAS_BACKEND"] = name


def _quiet_noise() -> None:
    """Third-party noise out, by category and module only (pcamlib's own warnings stay)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="keras")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras.src.trainers")
    # TensorFlow logs (not warns) when a new model's train step is traced again, which every
    # notebook that trains several models does by design.
    logging.getLogger("tensorflow").addFilter(_not_retracing)
    # No machine-specific source paths in stored outputs.
    warnings.formatwarning = lambda message, category, *_: f"{category.__name__}: {message}\n"
    # 100 dpi keeps figure text readable on GitHub and Colab; JPEG keeps tissue photos small.
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100})
    with contextlib.suppress(ImportError):  # not in a notebook kernel
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("jpeg")
    quiet_keras()


def _not_retracing(record: logging.LogRecord) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()


def status_line(s) -> str:
    """One line: which data (with counts), device, backend, precision and mode this session
    uses."""
    import keras

    from .config import data_kind
    from .devices import describe_device, precision_policy

    data = data_kind(s.data_dir)
    labels, test = s.data_dir / "train_labels.csv", s.data_dir / "test"
    if labels.is_file():  # the Kaggle layout; other layouts are not counted
        with open(labels, "rb") as f:
            n_train = max(0, sum(1 for _ in f) - 1)  # minus the header
        n_test = sum(1 for e in os.scandir(test) if e.name.endswith(".tif")) if test.is_dir() else 0
        data += f" ({n_train:,} train / {n_test:,} test patches)"
    return (
        f"data: {data} · device: {describe_device()} · backend: {keras.backend.backend()} · "
        f"precision: {precision_policy('auto')} · mode: {s.mode}"
    )


@contextlib.contextmanager
def native_chatter_dropped():
    """Run the block with fd 2 captured, then replay every line but TensorFlow's chatter.

    TensorFlow logs through absl straight to fd 2, so even ``TF_CPP_MIN_LOG_LEVEL=3`` lets a CPU
    machine print "Could not find cuda drivers"; only a redirect catches it. Errors still show.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (some embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            no_driver = not os.path.exists("/proc/driver/nvidia/version")
            sys.stderr.write("".join(
                line for line in captured.read().decode(errors="replace").splitlines(True)
                if not (CHATTER.match(line) or no_driver and NO_CUDA.match(line))
            ))  # fmt: skip


def quiet_keras() -> None:
    """Import Keras and let TensorFlow find its devices, without the chatter (once)."""
    if "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_chatter_dropped():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # where CUDA reports itself


def importable_start(home: str | Path):
    """``pcamlib.notebook.start``, after a plain ``pip install home`` where pcamlib is missing.

    The set-up cell calls this through :func:`runpy.run_path`. A plain (not editable) install is
    importable in the running kernel at once: no restart. A clone folder named ``pcamlib`` in
    the working folder is only a namespace package (no origin) and does not count.
    """
    import importlib
    import importlib.util
    import subprocess

    if getattr(importlib.util.find_spec("pcamlib"), "origin", None) is None:
        print(f"pcamlib is not importable here: installing it from {home} …", flush=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", str(home)]
        done = subprocess.run(pip, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(pip)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        importlib.invalidate_caches()
    return importlib.import_module("pcamlib.notebook").start


def repository_url(pyproject: str | Path = "pyproject.toml") -> str:
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


def quiet_kernels() -> Path:
    """Make notebook kernels leave native (C++) stderr alone; returns the IPython dir used.

    ipykernel forwards file-descriptor output into cell outputs by default, so TensorFlow's
    C++ log lines would land in stored outputs and break every ``pytest --nbval`` comparison.
    """
    ipython_dir = Path(tempfile.mkdtemp(prefix="pcam-ipython-"))
    (ipython_dir / "profile_default").mkdir()
    config = ipython_dir / "profile_default" / "ipython_kernel_config.py"
    config.write_text("c.IPKernelApp.capture_fd_output = False\n")
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
        began = time.perf_counter()
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
            raise SystemExit(
                f"{path}: a cell failed (outputs saved in the notebook)\n{exc}"
            ) from None
        finally:
            nbformat.write(notebook, path)
        times.append((path.name, time.perf_counter() - began))
        print(f"  done in {times[-1][1]:.0f} s", flush=True)
    return times


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pcamlib.notebook", description="Run the notebook series in order, in place."
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
