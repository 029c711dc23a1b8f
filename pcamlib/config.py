"""Run configuration and the one smoke switch.

``PCAM_SMOKE=1`` (set by the test configuration) means "prove the code path, fast": one
short epoch, a few batches, no pretrained downloads. Notebooks ask :func:`settings` and never
branch on the switch themselves.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

KAGGLE_INPUT = Path("/kaggle/input/histopathologic-cancer-detection")  # Kaggle Notebooks
KAGGLE_WORKING = Path("/kaggle/working")  # the only writable, kept folder there


def project_root() -> Path:
    """The checkout with ``data/sample``: $PCAM_HOME, else cwd or a parent, else the package's."""
    if os.environ.get("PCAM_HOME"):
        return Path(os.environ["PCAM_HOME"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "data" / "sample" / "train_labels.csv").is_file():
            return folder
    return Path(__file__).resolve().parent.parent


REPO_ROOT = project_root()
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
FULL_DIR = REPO_ROOT / "data" / "full"


def on_kaggle() -> bool:
    """A Kaggle Notebook with the competition attached as input."""
    return (KAGGLE_INPUT / "train_labels.csv").is_file()


def output_dir() -> Path:
    """Where runs, figures and submission.csv go: $PCAM_OUT, else ``outputs/`` of the project.

    On Kaggle the project's folder may be read-only: outputs go to /kaggle/working/outputs.
    """
    default = KAGGLE_WORKING / "outputs" if on_kaggle() else project_root() / "outputs"
    path = Path(os.environ.get("PCAM_OUT") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def smoke() -> bool:
    """True when ``PCAM_SMOKE`` is set to 1/true/yes."""
    return os.environ.get("PCAM_SMOKE", "").strip().lower() in ("1", "true", "yes")


def default_data_dir() -> Path:
    """$PCAM_DATA, else the full data (``data/full`` or Kaggle's input), else the sample."""
    override = os.environ.get("PCAM_DATA")
    if override:
        return Path(override)
    if not smoke():
        full = project_root() / "data" / "full"
        if (full / "train_labels.csv").is_file():
            return full
        if on_kaggle():
            return KAGGLE_INPUT
    return project_root() / "data" / "sample"


def default_cache_root() -> Path | None:
    """Where packed caches go when not beside the data (None: beside it).

    $PCAM_CACHE_DIR if set; on Kaggle /kaggle/working (the input is read-only); with
    persistent outputs ($PCAM_OUT) a ``cache/`` folder in them, so the cache survives too.
    """
    if os.environ.get("PCAM_CACHE_DIR"):
        return Path(os.environ["PCAM_CACHE_DIR"])
    if on_kaggle():
        return KAGGLE_WORKING / ".pcam-cache"
    if os.environ.get("PCAM_OUT") and not smoke():
        return Path(os.environ["PCAM_OUT"]) / "cache"
    return None


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run directory.

    Args:
        image_size: model input side in pixels (None: the model's default, 64 for the
            baselines, 96 for backbones, 64-pixel centre crop for pcamnet).
        lr: peak learning rate; scaled by the number of replicas under a distribution strategy.
        warmup_epochs: linear warm-up length before the schedule (fractions allowed).
        batch_size: per replica; the global batch is batch_size × replicas.
        augment: random dihedral views; ``shift`` and ``color_jitter`` add translation and
            colour jitter (see :class:`pcamlib.data.PatchStream`), ``hed_jitter`` stain jitter.
        augment_on: "host" runs those in numpy while batching (cheapest on a CPU-only
            machine); "model" runs them as the training model's first layers, on the
            accelerator, so a 2-core host can feed a GPU (:mod:`pcamlib.augment_layers`).
        steps_per_epoch: cap on batches per epoch (smoke runs); None means the whole split.
        val_limit: validate on a class-balanced subset of this many rows (smoke runs).
        workers: threads preparing batches (augmentation); more keep a fast GPU fed.
        split: 'stratified' random split, or 'slide' (needs groups_csv or HDF5 meta) so no
            slide is on both sides.
    """

    model: str = "cnn1"
    data: str = ""
    out: str = "runs/cnn1"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-4
    image_size: int | None = None
    val_fraction: float = 0.25
    test_fraction: float = 0.2  # share of labelled rows only reported (pcamlib.protocol); 0: none
    seed: int = 42
    weights: str | None = None
    trainable: bool | None = None
    augment: bool = False
    shift: int = 0
    color_jitter: float = 0.0
    hed_jitter: float = 0.0  # HED stain jitter strength σ in optical density (0.05 mild); 0: off
    augment_on: str = "host"  # where augment/shift/jitters run: "host" (numpy) or "model" (layers)
    stain_norm: str | None = None  # "reinhard": stain normalisation inside the model (train + test)
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    early_stopping: int | None = None
    mixed_precision: str = "auto"
    strategy: str = "auto"
    tensorboard: bool = False
    steps_per_epoch: int | None = None
    val_limit: int | None = None
    workers: int = 1
    split: str = "stratified"
    groups_csv: str | None = None
    cache_dir: str | None = None
    exclude_bad: bool = False
    recipe: str | None = None
    tta: int = 1
    model_kwargs: dict = field(default_factory=dict)

    def __new__(cls, *args, **kwargs):
        # Remember which fields the caller set: a recipe fills only the others, even where an
        # explicit value equals the default (``TrainConfig(recipe="pcam-cpu", batch_size=64)``).
        self = super().__new__(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        self._given = frozenset(names[: len(args)]) | frozenset(kwargs)
        return self

    def __post_init__(self) -> None:
        """Fill the fields not given from ``recipe``, then refuse what cannot be honoured.

        Raises :class:`pcamlib.limits.SettingError` naming the setting, its value and what is
        allowed, before any file is written.
        """
        from .limits import check_train
        from .recipes import recipe_values

        if self.recipe is not None:
            given = {name: getattr(self, name) for name in self._given}
            for name, value in recipe_values(self.recipe, given).items():
                setattr(self, name, value)
        check_train(self, self._given)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**values)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Settings:
    """What 'small' means for this session, and where things are: the notebooks' one source."""

    smoke: bool
    data_dir: Path
    out_dir: Path
    weights: str | None
    steps_per_epoch: int | None
    eval_limit: int | None
    accelerator: str
    cache_dir: Path | None = None  # packed caches (None: beside the data); see start()

    @property
    def recipe(self) -> str:
        """The recipe that fits this device: ``pcam-gpu`` on a GPU/TPU, ``pcam-cpu`` on a CPU."""
        return "pcam-cpu" if self.accelerator == "cpu" else "pcam-gpu"

    @property
    def mode(self) -> str:
        """'smoke' (tests: a few batches), else 'CPU' or 'GPU'/'TPU' (full-size runs)."""
        return "smoke" if self.smoke else self.accelerator.upper()

    def train_config(self, **fields) -> TrainConfig:
        """A TrainConfig on this session's data, shrunk to a few batches in smoke runs."""
        fields.setdefault("data", str(self.data_dir))
        config = TrainConfig(**fields)
        if self.smoke:
            config = config.replace(
                epochs=1, steps_per_epoch=self.steps_per_epoch, val_limit=self.eval_limit
            )
        return config

    def epochs(self, full: int, cpu: int | None = None) -> int:
        """``full`` epochs on a GPU/TPU, ``cpu`` (if given) without one, 1 in smoke mode."""
        if self.smoke:
            return 1
        return cpu if cpu is not None and self.accelerator == "cpu" else full


def data_kind(data_dir: Path) -> str:
    """'sample', 'full' or 'Kaggle input': what the status line calls a data folder."""
    if data_dir.resolve() == KAGGLE_INPUT.resolve():
        return "Kaggle input"
    return {"sample": "sample", "full": "full"}.get(data_dir.name, str(data_dir))


def settings() -> Settings:
    """Read the environment once: smoke switch, data location, pretrained weights on or off."""
    from .devices import accelerator

    is_smoke = smoke()
    return Settings(
        smoke=is_smoke,
        data_dir=default_data_dir(),
        out_dir=output_dir(),
        weights=None if is_smoke or os.environ.get("PCAM_NO_PRETRAINED") else "imagenet",
        steps_per_epoch=3 if is_smoke else None,
        eval_limit=32 if is_smoke else None,
        accelerator=accelerator()[0],
        cache_dir=default_cache_root(),
    )
