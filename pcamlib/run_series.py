"""Execute the notebook series in order, in place: ``python -m pcamlib.run_series notebooks``.

Used by ``make run``. Each notebook runs top to bottom in a fresh kernel with its own folder
as working directory; outputs are stored in the notebook, artefacts go to ``outputs/``.
A failing cell stops the series with the notebook and cell named.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def quiet_kernels() -> Path:
    """Make notebook kernels leave native (C++) stderr alone; returns the IPython dir used.

    ipykernel forwards file-descriptor output into cell outputs by default, so TensorFlow's
    timestamped C++ log lines (which no environment variable silences) would land in stored
    outputs and make every ``pytest --nbval`` comparison fail. With ``capture_fd_output``
    off they go to the terminal instead, like any other program's logs.
    """
    ipython_dir = Path(tempfile.mkdtemp(prefix="pcam-ipython-"))
    profile = ipython_dir / "profile_default"
    profile.mkdir()
    (profile / "ipython_kernel_config.py").write_text("c.IPKernelApp.capture_fd_output = False\n")
    os.environ["IPYTHONDIR"] = str(ipython_dir)
    return ipython_dir


def run_series(folder: str | Path, timeout: int = 3600) -> list[tuple[str, float]]:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    quiet_kernels()
    times = []
    for path in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        print(f"running {path} …", flush=True)
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
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
    if not times:
        raise SystemExit(f"{folder}: no NN_*.ipynb notebooks found")
    return times


if __name__ == "__main__":
    run_series(sys.argv[1] if len(sys.argv) > 1 else "notebooks")
