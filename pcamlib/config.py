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

from .limits import (
    COUNT,
    FRACTION,
    MAX_IMAGE_SIZE,
    MODEL_NAMES,
    PCAM_UNUSED,
    PRECISION_MODES,
    STRATEGIES,
    TTA_VIEWS,
    YES_NO,
    Choice,
    Number,
    Rule,
    check_train,
)
from .recipes import RECIPES, recipe_values

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
    """$PCAM_DATA, else the full data (``data/full``, ``data/pcam`` once complete, or Kaggle's
    input), else the sample."""
    override = os.environ.get("PCAM_DATA")
    if override:
        return Path(override)
    if not smoke():
        from .sources import is_pcam_layout

        full, pcam = project_root() / "data" / "full", project_root() / "data" / "pcam"
        if (full / "train_labels.csv").is_file():
            return full
        if is_pcam_layout(pcam):  # what pcam download --source pcam leaves when complete
            return pcam
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


def pcam_data(data: str | os.PathLike) -> bool:
    """Is ``data`` PCam's HDF5 layout with all three splits, or a cache packed from one?"""
    from .sources import PCAM_SPLITS, is_pcam_layout

    if not str(data):
        return False
    if is_pcam_layout(data):
        return True
    try:
        source = json.loads((Path(data) / "meta.json").read_text()).get("source", "")
    except (OSError, ValueError, AttributeError):
        return False
    return str(source).startswith(f"{PCAM_SPLITS}:")


def _setting(default, rule: Rule | None = None, help: str = ""):
    """A TrainConfig field with its valid values (checked by limits) and its --help text."""
    return field(default=default, metadata={"rule": rule, "help": help})


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run directory.

    Each setting states its default, its valid values and what it does (``pcam train --help``
    shows the same). ``recipe`` fills the settings the caller did not give.
    """

    model: str = _setting("cnn1", Choice(MODEL_NAMES))
    data: str = _setting("", help="dataset root (any layout) or a packed cache")
    out: str = _setting("runs/cnn1", help="run directory (rerun to resume)")
    epochs: int = _setting(5, Number(int, 1, 10000))
    batch_size: int = _setting(64, Number(int, 1, 65536), "per replica")
    lr: float = _setting(
        1e-4, Number(float, 0, 1, low_open=True), "peak learning rate (× replicas)"
    )
    image_size: int | None = _setting(
        None,
        Number(int, 1, MAX_IMAGE_SIZE, optional=True),  # and per model: limits.check_train
        "model input side; cnn1/cnn2 take ≥ 16 (default 64), backbones ≥ 32 (default 96), "
        "pcamnet a centre crop of 2^(stages-1) to 96, 2^stages with a stem (default 64)",
    )
    val_fraction: float = _setting(0.25, Number(float, 0, 0.5, low_open=True))
    test_fraction: float = _setting(
        0.2,
        Number(float, 0, 0.4),
        "share held out for testing, the same rows for every run; 0: separate test data",
    )
    seed: int = _setting(42, Number(int, 0, 2**31 - 1))
    weights: str | None = _setting(
        None, Choice(("imagenet", None)), "imagenet: pretrained backbone; none: from scratch"
    )
    trainable: bool | None = _setting(
        None, Choice((True, False, None)), "backbone trainable (default: not with imagenet weights)"
    )
    augment: bool = _setting(False, YES_NO, "random dihedral views")
    # Beyond 32 px the labelled centre 32×32 can leave the 96-px patch.
    shift: int = _setting(0, Number(int, 0, 32), "random shifts of up to N pixels")
    color_jitter: float = _setting(0.0, FRACTION, "colour jitter")
    hed_jitter: float = _setting(0.0, FRACTION, "HED stain jitter σ")
    augment_on: str = _setting(
        "host",
        Choice(("host", "model")),
        "host: numpy while batching (cheapest on a CPU); model: first layers of the model, on "
        "the accelerator, so 2 host cores can feed a GPU",
    )
    stain_norm: str | None = _setting(
        None, Choice((None, "reinhard")), "stain normalisation inside the model"
    )
    optimizer: str = _setting("adam", Choice(("adam", "adamw", "sgd")))
    weight_decay: float = _setting(0.0, Number(float, 0, 1), "adamw only")
    schedule: str = _setting("constant", Choice(("constant", "cosine", "onecycle")))
    warmup_epochs: float = _setting(0.0, Number(float, 0), "linear warm-up, ≤ epochs")
    label_smoothing: float = _setting(0.0, FRACTION)
    early_stopping: int | None = _setting(None, COUNT, "patience: epochs without a val-AUC gain")
    mixed_precision: str = _setting("auto", Choice(PRECISION_MODES))
    strategy: str = _setting("auto", Choice(STRATEGIES), "distribution strategy")
    tensorboard: bool = _setting(False, YES_NO, "write TensorBoard logs")
    steps_per_epoch: int | None = _setting(None, COUNT, "cap on batches per epoch")
    val_limit: int | None = _setting(
        None, Number(int, 2, optional=True), "validate on a class-balanced subset of N rows"
    )
    workers: int = _setting(1, Number(int, 1, 256), "threads preparing batches")
    split: str = _setting(
        "stratified",
        Choice(("stratified", "slide", "pcam")),
        "stratified: random, class-balanced parts; slide: no slide on both sides (needs "
        "groups-csv or HDF5 meta); pcam: PCam's own splits, train / valid (val: picks "
        "best.keras and the threshold) / test (only reported), slide-disjoint by construction, "
        "no val/test fraction; default: pcam on PCam's HDF5 layout with all three splits (or "
        "a cache of it), else stratified",
    )
    groups_csv: str | None = _setting(None, help="patch→slide csv (id,wsi) for split slide")
    cache_dir: str | None = _setting(None, help="where packed caches go (default: beside data)")
    exclude_bad: bool = _setting(
        False, YES_NO, "leave out unreadable items (listed in excluded.csv)"
    )
    recipe: str | None = _setting(
        None, help=f"named recipe, one of {', '.join(RECIPES)}; explicit settings win"
    )
    tta: int = _setting(1, Choice(TTA_VIEWS), "views evaluate/predict use by default")
    init: str | None = _setting(
        None,
        help="start from these weights: 'pretrained' (the shipped PCamNet; use with recipe "
        "pcam-cpu) or a run directory / .keras file of the same model; default: random",
    )
    model_kwargs: dict = field(default_factory=dict)

    def __new__(cls, *args, **kwargs):
        # Remember which fields the caller set: a recipe fills only the others, even where an
        # explicit value equals the default (``TrainConfig(recipe="pcam-cpu", batch_size=64)``).
        self = super().__new__(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        self._given = frozenset(names[: len(args)]) | frozenset(kwargs)
        return self

    def __post_init__(self) -> None:
        """Fill the fields not given from ``recipe``, then refuse (SettingError) what cannot be
        honoured, before any file is written."""
        if self.recipe is not None:
            given = {name: getattr(self, name) for name in self._given}
            for name, value in recipe_values(self.recipe, given).items():
                setattr(self, name, value)
        if "split" not in self._given and pcam_data(self.data):
            self.split = "pcam"
        if self.split == "pcam":  # PCam's splits are the parts: the fractions are not used
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in PCAM_UNUSED:
                if name not in self._given:  # e.g. a recipe's val_fraction
                    setattr(self, name, defaults[name])
        check_train(self, self._given)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        values = json.loads(text)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
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
    forced: bool = False  # accelerator comes from PCAM_MODE, not from the device

    @property
    def recipe(self) -> str:
        """The recipe that fits this device: ``pcam-gpu`` on a GPU, ``pcam-cpu`` on a CPU."""
        return "pcam-cpu" if self.accelerator == "cpu" else "pcam-gpu"

    @property
    def init(self) -> str | None:
        """Where the recipe starts: the shipped weights for ``pcam-cpu`` on the sample (whose
        overlap with their training patches is known and left out of every score), else random.
        """
        on_sample = self.data_dir.resolve() == (project_root() / "data" / "sample").resolve()
        return "pretrained" if self.recipe == "pcam-cpu" and on_sample else None

    @property
    def mode(self) -> str:
        """'smoke' (tests: a few batches), else 'CPU' or 'GPU' (full-size runs); with
        ', GPU path forced' when PCAM_MODE chose the path."""
        size = "smoke" if self.smoke else self.accelerator.upper()
        forced = f", {self.accelerator.upper()} path forced (PCAM_MODE)" if self.forced else ""
        return size + forced

    def train_config(self, **fields) -> TrainConfig:
        """A TrainConfig on this session's data, shrunk to a few batches in smoke runs."""
        fields.setdefault("data", str(self.data_dir))
        config = TrainConfig(**fields)
        if self.smoke:
            config = config.replace(
                epochs=1, steps_per_epoch=self.steps_per_epoch, val_limit=self.eval_limit
            )
        return config

    def cpu_budget(self, value: int) -> int | None:
        """A demonstration budget (batches per epoch, validation rows): ``value`` without a
        GPU, None (no cap) with one."""
        return value if self.accelerator == "cpu" else None

    def epochs(self, full: int, cpu: int | None = None) -> int:
        """``full`` epochs on a GPU, ``cpu`` (if given) without one, 1 in smoke mode."""
        if self.smoke:
            return 1
        return cpu if cpu is not None and self.accelerator == "cpu" else full


def data_kind(data_dir: Path) -> str:
    """'sample', 'full', 'pcam' or 'Kaggle input': what the status line calls a data folder."""
    from .sources import is_pcam_layout

    if data_dir.resolve() == KAGGLE_INPUT.resolve():
        return "Kaggle input"
    if data_dir.name == "pcam" or is_pcam_layout(data_dir):
        return "pcam"
    return {"sample": "sample", "full": "full"}.get(data_dir.name, str(data_dir))


def settings() -> Settings:
    """Read the environment once: smoke switch, data location, pretrained weights on or off."""
    from .train import accelerator, forced_mode

    is_smoke, forced = smoke(), forced_mode()
    return Settings(
        smoke=is_smoke,
        data_dir=default_data_dir(),
        out_dir=output_dir(),
        weights=None if is_smoke or os.environ.get("PCAM_NO_PRETRAINED") else "imagenet",
        steps_per_epoch=3 if is_smoke else None,
        eval_limit=32 if is_smoke else None,
        accelerator=forced or accelerator()[0],
        cache_dir=default_cache_root(),
        forced=forced is not None,
    )
