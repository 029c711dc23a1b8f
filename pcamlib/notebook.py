"""The notebook session: ``S = start(…)`` and its :class:`Settings`. The set-up cell runs this
file before pcamlib is importable, so module level imports the standard library only."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

DRIVE = Path("/content/drive")
BACKENDS = ("tensorflow", "jax")  # the Keras backends the series runs on
# TensorFlow's native start-up lines (absl info/warnings, CPU advice; cuInit without a driver).
CHATTER = re.compile(r"^(WARNING: All log messages before absl|[IW]\d{4} |To enable the following)")
NO_CUDA = re.compile(r"^E\d{4} .*failed call to cuInit")


@dataclass(frozen=True)
class Settings:
    """What 'small' means for this session, and where things are: the notebooks' one source."""

    smoke: bool
    data_dir: Path
    out_dir: Path  # runs, figures, submission.csv
    weights: str | None
    steps_per_epoch: int | None
    eval_limit: int | None
    accelerator: str
    forced: bool = False  # accelerator comes from PCAM_MODE, not from the device

    @property
    def recipe(self) -> str:
        return "pcam-cpu" if self.accelerator == "cpu" else "pcam-gpu"

    @property
    def init(self) -> str | None:
        """'pretrained' for pcam-cpu on the sample (scores leave out the shipped weights' training
        patches), else None (random)."""
        from .config import project_root

        on_sample = self.data_dir.resolve() == (project_root() / "data" / "sample").resolve()
        return "pretrained" if self.recipe == "pcam-cpu" and on_sample else None

    @property
    def mode(self) -> str:
        forced = f", {self.accelerator.upper()} path forced (PCAM_MODE)" if self.forced else ""
        return ("smoke" if self.smoke else self.accelerator.upper()) + forced

    def train_config(self, **fields):
        """A TrainConfig on this session's data, shrunk to a few batches in smoke runs."""
        from .config import TrainConfig

        fields.setdefault("data", str(self.data_dir))
        recipe = fields.pop("recipe", None)
        config = TrainConfig.from_recipe(recipe, **fields) if recipe else TrainConfig(**fields)
        small = dict(epochs=1, steps_per_epoch=self.steps_per_epoch, val_limit=self.eval_limit)
        return config.replace(**small) if self.smoke else config

    def cpu_budget(self, value: int) -> int | None:
        """A demonstration budget (batches, rows): ``value`` without a GPU, None with one."""
        return value if self.accelerator == "cpu" else None

    def epochs(self, full: int, cpu: int) -> int:
        """``full`` epochs on a GPU, ``cpu`` without one, 1 in smoke mode."""
        return 1 if self.smoke else cpu if self.accelerator == "cpu" else full


def data_kind(data_dir: Path) -> str:
    """'sample', 'full', 'pcam' or 'Kaggle input': what the status line calls a data folder."""
    from .config import KAGGLE_INPUT
    from .pcam import is_pcam_layout

    if data_dir.resolve() == KAGGLE_INPUT.resolve():
        return "Kaggle input"
    named = data_dir.name in ("sample", "full", "pcam")
    return "pcam" if is_pcam_layout(data_dir) else data_dir.name if named else str(data_dir)


def settings() -> Settings:
    """Read the environment once; outputs go to $PCAM_OUT, else outputs/ (on Kaggle, whose
    project folder may be read-only, in /kaggle/working)."""
    from . import config
    from .train import accelerator

    small, forced = config.smoke(), config.forced_mode()
    root = config.KAGGLE_WORKING if config.on_kaggle() else config.project_root()
    out = Path(os.environ.get("PCAM_OUT") or root / "outputs")
    out.mkdir(parents=True, exist_ok=True)
    return Settings(
        smoke=small,
        data_dir=config.default_data_dir(),
        out_dir=out,
        weights=None if small or os.environ.get("PCAM_NO_PRETRAINED") else "imagenet",
        steps_per_epoch=3 if small else None,
        eval_limit=32 if small else None,
        accelerator=forced or accelerator()[0],
        forced=forced is not None,
    )


def start(home=None, outputs: str = "", mode: str | None = None, backend: str = ""):
    """Point pcamlib at the clone (``home``) and ``outputs`` ("drive": Google Drive on Colab,
    which a disconnect does not lose; "": $PCAM_OUT or the default), force a ``mode`` ("gpu",
    "cpu") or Keras ``backend``, quiet known noise, print one status line; the :class:`Settings`."""
    _use_backend(backend)
    if home is not None:
        os.environ["PCAM_HOME"] = str(Path(home).resolve())
    if outputs == "drive":
        try:
            from google.colab import drive  # only on Colab
        except ImportError:
            elsewhere = 'elsewhere give a folder, e.g. outputs="~/pcam"'
            raise RuntimeError(f'outputs="drive" needs Google Colab; {elsewhere}') from None
        if not (DRIVE / "MyDrive").is_dir():
            drive.mount(str(DRIVE))
        outputs = str(DRIVE / "MyDrive" / "pcamlib")
    if mode is not None:
        os.environ["PCAM_MODE"] = mode
    if outputs:
        os.environ["PCAM_OUT"] = str(Path(outputs).expanduser())
    # Third-party noise out, by category and module only (pcamlib's own warnings stay).
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="keras")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras.src.trainers")
    # TensorFlow logs each retrace, which notebooks that train several models do by design.
    retrace = "triggered tf.function retracing"
    logging.getLogger("tensorflow").addFilter(lambda record: retrace not in record.getMessage())
    # No machine-specific source paths in stored outputs.
    warnings.formatwarning = lambda message, category, *_: f"{category.__name__}: {message}\n"
    # 100 dpi keeps figure text readable on GitHub and Colab; JPEG keeps tissue photos small.
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100})
    with contextlib.suppress(ImportError):  # not in a notebook kernel
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("jpeg")
    quiet_keras()
    found = settings()
    print(status_line(found))
    return found


def _use_backend(name: str) -> None:
    """Set ``$KERAS_BACKEND`` while Keras is not imported yet; refuse a switch after that."""
    if name not in ("", *BACKENDS):
        raise ValueError(f'backend="{name}": must be one of {", ".join(BACKENDS)} (or "")')
    running = sys.modules["keras"].backend.backend() if "keras" in sys.modules else name
    if name and running != name:
        again = "in this kernel; restart it and run the set-up cell first"
        raise RuntimeError(f'backend="{name}": Keras already runs on {running} {again}')
    if name:
        os.environ["KERAS_BACKEND"] = name


def status_line(s) -> str:
    """One line: the session's data (with counts), device, backend, precision and mode."""
    import keras

    from .train import describe_device, precision_policy

    data = data_kind(s.data_dir)
    labels = s.data_dir / "train_labels.csv"
    if labels.is_file():  # the Kaggle layout; other layouts are not counted
        n_train = max(0, len(labels.read_bytes().splitlines()) - 1)  # minus the header
        n_test = len(list((s.data_dir / "test").glob("*.tif")))
        data += f" ({n_train:,} train / {n_test:,} test patches)"
    device, backend = describe_device(), keras.backend.backend()
    return (
        f"data: {data} · device: {device} · backend: {backend} · "
        f"precision: {precision_policy('auto')} · mode: {s.mode}"
    )


def quiet_keras() -> None:
    """Import Keras and let TensorFlow find its devices (once), its chatter dropped: absl writes
    it straight to fd 2 whatever ``TF_CPP_MIN_LOG_LEVEL`` says, so fd 2 is captured."""
    if "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import keras

            keras.distribution.list_devices()  # where CUDA reports itself
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            no_driver = not os.path.exists("/proc/driver/nvidia/version")
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not (CHATTER.match(line) or no_driver and NO_CUDA.match(line)):
                    sys.stderr.write(line)


def importable_start(home: str | Path):
    """``start``, after a plain ``pip install home`` where pcamlib is missing (importable at
    once, no restart; a clone folder named ``pcamlib`` is a namespace package and not it)."""
    if getattr(importlib.util.find_spec("pcamlib"), "origin", None) is None:
        print(f"pcamlib is not importable here: installing it from {home} …", flush=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", str(home)]
        done = subprocess.run(pip, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(pip)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        importlib.invalidate_caches()
    return importlib.import_module("pcamlib.notebook").start
