"""What every notebook does first, in one call: ``S = start(home, outputs=OUTPUTS, …)``.

The set-up cell (:data:`pcamlib.run_series.SETUP_CELL`) makes pcamlib importable, then calls
:func:`start`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

from .config import Settings, data_kind, settings
from .quiet import quiet_keras

DRIVE = Path("/content/drive")
BACKENDS = ("tensorflow", "jax")  # the Keras backends the series runs on


def start(
    home: str | os.PathLike | None = None,
    outputs: str = "",
    mode: str | None = None,
    backend: str = "",
) -> Settings:
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
    """
    _use_backend(backend)
    if home is not None:
        os.environ["PCAM_HOME"] = str(Path(home).resolve())
    if outputs == "drive":
        try:
            from google.colab import drive  # only on Colab
        except ImportError:
            raise RuntimeError(
                'outputs="drive" needs Google Colab; elsewhere give a folder, e.g. outputs="~/pcam"'
            ) from None
        if not (DRIVE / "MyDrive").is_dir():
            drive.mount(str(DRIVE))
        outputs = str(DRIVE / "MyDrive" / "pcamlib")
    if mode is not None:
        os.environ["PCAM_MODE"] = mode
    if outputs:
        os.environ["PCAM_OUT"] = str(Path(outputs).expanduser())
    # Third-party warnings known to be noise, by category and module only: pcamlib's own
    # (e.g. ImageNet weights unavailable) stay visible.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="keras")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras.src.trainers")
    # TensorFlow logs (not warns) when a new model's train step is traced again, which every
    # notebook that trains several models does by design.
    logging.getLogger("tensorflow").addFilter(_not_retracing)
    warnings.formatwarning = _short_warning  # no machine-specific source paths in outputs
    # 100 dpi keeps figure text readable on GitHub and Colab; JPEG keeps tissue photos small.
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100})
    with contextlib.suppress(ImportError):  # not in a notebook kernel
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("jpeg")
    quiet_keras()  # the backend's native start-up lines stay out of the notebook
    found = settings()
    if found.cache_dir is not None:  # load_patches (and the CLI) read it from here
        os.environ.setdefault("PCAM_CACHE_DIR", str(found.cache_dir))
    print(status_line(found))
    return found


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


def status_line(s: Settings) -> str:
    """One line: which data (with counts), device, backend, precision and mode this session
    uses."""
    import keras

    from .train import describe_device, precision_policy

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


def _short_warning(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {message}\n"


def _not_retracing(record: logging.LogRecord) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()
