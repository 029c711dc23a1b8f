"""What every notebook does first, in one call: ``S = start(home, outputs=OUTPUTS)``.

The set-up cell (the same in every notebook, see :data:`pcamlib.run_series.SETUP_CELL`) makes
pcamlib importable and then calls :func:`start`, which points the library at the project's
clone, chooses where outputs go, sets the figure defaults and prints one status line: which
data, which device, which precision and which mode this notebook runs with.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from .config import Settings, data_kind, settings
from .quiet import quiet_keras

DRIVE = Path("/content/drive")
DRIVE_OUTPUTS = DRIVE / "MyDrive" / "pcamlib"


def start(home: str | os.PathLike | None = None, outputs: str = "") -> Settings:
    """Settings for this notebook, after the one status line.

    Args:
        home: the project's clone (with ``data/sample``); becomes ``$PCAM_HOME``.
        outputs: where runs, the packed cache and ``submission.csv`` go. ``""`` keeps
            ``$PCAM_OUT`` or the default (``outputs/`` of the project, ``/kaggle/working``
            on Kaggle); ``"drive"`` mounts Google Drive on Colab and uses
            ``MyDrive/pcamlib``, so a disconnect loses nothing and training resumes; any
            other value is a folder.
    """
    if home is not None:
        os.environ["PCAM_HOME"] = str(Path(home).resolve())
    if outputs:
        os.environ["PCAM_OUT"] = str(_outputs_folder(outputs))
    _quiet_known_noise()
    _figure_defaults()
    quiet_keras()  # the backend's native start-up lines stay out of the notebook
    found = settings()
    if found.cache_dir is not None:  # load_patches (and the CLI) read it from here
        os.environ.setdefault("PCAM_CACHE_DIR", str(found.cache_dir))
    print(status_line(found))
    return found


def status_line(s: Settings) -> str:
    """One line: which data (with counts), device, precision and mode this session uses."""
    from .devices import describe_device, precision_policy

    counts = patch_counts(s.data_dir)
    data = data_kind(s.data_dir) + (f" ({counts})" if counts else "")
    return (
        f"data: {data} · device: {describe_device()} · "
        f"precision: {precision_policy('auto')} · mode: {s.mode}"
    )


def patch_counts(data_dir: Path) -> str:
    """'1,600 train / 29 test patches' for the Kaggle layout; '' for layouts it cannot count."""
    labels, test = data_dir / "train_labels.csv", data_dir / "test"
    if not labels.is_file():
        return ""
    with open(labels, "rb") as f:
        n_train = max(0, sum(1 for _ in f) - 1)  # minus the header
    n_test = sum(1 for e in os.scandir(test) if e.name.endswith(".tif")) if test.is_dir() else 0
    return f"{n_train:,} train / {n_test:,} test patches"


def _outputs_folder(outputs: str) -> Path:
    if outputs != "drive":
        return Path(outputs).expanduser()
    try:
        from google.colab import drive  # only on Colab
    except ImportError:
        raise RuntimeError(
            'outputs="drive" needs Google Colab; elsewhere give a folder, e.g. outputs="~/pcam"'
        ) from None
    if not (DRIVE / "MyDrive").is_dir():
        drive.mount(str(DRIVE))
    return DRIVE_OUTPUTS


def _quiet_known_noise() -> None:
    """Silence the third-party warnings known to be noise, by category and module only.

    Everything else stays visible, in particular pcamlib's own warnings (e.g. that ImageNet
    weights were unavailable and a backbone starts from random weights).
    """
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="keras")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras.src.trainers")
    # TensorFlow logs (not warns) when a new model's train step is traced again, which every
    # notebook that trains several models does by design.
    logging.getLogger("tensorflow").addFilter(_not_retracing)
    warnings.formatwarning = _short_warning  # no machine-specific source paths in outputs


def _short_warning(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {message}\n"


def _not_retracing(record: logging.LogRecord) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()


def _figure_defaults() -> None:
    """100 dpi keeps figure text readable on GitHub and in Colab; JPEG keeps photos small."""
    import matplotlib.pyplot as plt

    plt.rcParams["figure.dpi"] = 100
    plt.rcParams["savefig.dpi"] = 100
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("jpeg")  # tissue photos: 100-dpi JPEG keeps notebooks small
    except ImportError:  # not in a notebook kernel
        pass
