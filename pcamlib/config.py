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


def project_root() -> Path:
    """The checkout with ``data/sample``: $PCAM_HOME, else cwd or a parent, else the package's."""
    if os.environ.get("PCAM_HOME"):
        return Path(os.environ["PCAM_HOME"])
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "data" / "sample" / "train_labels.csv").is_file():
            return folder
    return Path(__file__).resolve().parent.parent


REPO_ROOT = project_root()
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
FULL_DIR = REPO_ROOT / "data" / "full"


def output_dir() -> Path:
    """Where notebooks write runs, figures and submission.csv ($PCAM_OUT, else ``outputs/``)."""
    path = Path(os.environ.get("PCAM_OUT", REPO_ROOT / "outputs"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def smoke() -> bool:
    """True when ``PCAM_SMOKE`` is set to 1/true/yes."""
    return os.environ.get("PCAM_SMOKE", "").strip().lower() in ("1", "true", "yes")


def default_data_dir() -> Path:
    """The full competition data when it has been put in ``data/full``, else the embedded sample."""
    override = os.environ.get("PCAM_DATA")
    if override:
        return Path(override)
    if (FULL_DIR / "train_labels.csv").is_file() and not smoke():
        return FULL_DIR
    return SAMPLE_DIR


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
            colour jitter (see :class:`pcamlib.data.PatchStream`).
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
    seed: int = 42
    weights: str | None = None
    trainable: bool | None = None
    augment: bool = False
    shift: int = 0
    color_jitter: float = 0.0
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
    """What 'small' means for this session: the notebooks' single source of run sizes."""

    smoke: bool
    data_dir: Path
    out_dir: Path
    weights: str | None
    steps_per_epoch: int | None
    eval_limit: int | None
    accelerator: str

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
    )
