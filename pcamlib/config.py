"""A run's settings: TrainConfig and its checks, the named recipes, where data and caches are.

A bad setting is refused in one line before anything is written; nothing heavy is imported, so
``pcam --help`` answers at once. The notebook session's Settings live in ``pcamlib.notebook``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path

MODEL_NAMES = ("cnn1", "cnn2", "vgg16", "vgg19", "resnet50", "pcamnet")
BACKBONE_NAMES = ("vgg16", "vgg19", "resnet50")
STRATEGIES = ("auto", "none", "mirrored")
PRECISION_MODES = ("auto", "on", "off", "bfloat16", "float16")
TTA_VIEWS = (1, 8)  # the patch alone, or its 8 dihedral views
PATCH_SIDE = 96  # pixels of every PCam / Kaggle patch
MAX_IMAGE_SIZE = 512  # a larger model input only upsamples 96 pixels at great cost
PCAM_UNUSED = ("val_fraction", "test_fraction")  # split "pcam" has its own val and test rows
FRACTION = "≥ 0 and < 1"
# The model_kwargs each model takes (pcamlib.models.build_model), with their ranges.
MODEL_KWARGS = {name: () for name in ("cnn1", "cnn2")}
MODEL_KWARGS |= {name: ("drop_rate",) for name in BACKBONE_NAMES}
MODEL_KWARGS["pcamnet"] = ("widths", "drop_rate", "stem")
KWARG_RANGES = {"drop_rate": FRACTION, "stem": "≥ 0 and ≤ 1024", "widths": "≥ 1"}
_OPS = {"≥": operator.ge, ">": operator.gt, "≤": operator.le, "<": operator.lt}
KAGGLE_INPUT = Path("/kaggle/input/histopathologic-cancer-detection")  # Kaggle Notebooks
KAGGLE_WORKING = Path("/kaggle/working")  # the only writable, kept folder there


class SettingError(ValueError):
    """A setting outside its valid values: its name and value, and what is allowed."""

    def __init__(self, setting: str, value, allowed: str):
        self.setting, self.value, self.allowed = setting, value, allowed
        super().__init__(f"{setting}={value!r}: {allowed}")


def range_problem(value, bounds: str, integer: bool, optional: bool = False) -> str | None:
    """Why ``value`` is not a number within ``bounds`` ("> 0 and ≤ 1"), or None if it is."""
    if value is None and optional:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int if integer else int | float)
    if ok and math.isfinite(value):
        limits = (part.split() for part in bounds.split(" and "))
        if all(_OPS[op](value, float(limit)) for op, limit in limits):
            return None
    what = "an integer" if integer else "a number"
    return f"must be {what} {bounds}" + (", or unset" if optional else "")


# Named recipes: every setting that makes a result, under one name (numbers: docs/results.md).
# pcam-cpu: 20k PCam patches in < 30 min on a 2-core CPU; the whole 96-px patch through a
# stride-2 stem sees the tissue around the labelled centre; dihedral views, small shifts and
# mild colour jitter fight overfitting; on a CPU numpy augmentation costs less than TF layers.
# fmt: off
RECIPES: dict[str, dict] = {
    "pcam-cpu": dict(
        model="pcamnet", image_size=96, model_kwargs={"widths": [24, 48, 96, 192], "stem": 24},
        batch_size=128, epochs=20, lr=2e-3, optimizer="adamw", weight_decay=0.01,
        schedule="cosine", warmup_epochs=0.5, augment=True, shift=4, color_jitter=0.1,
        val_fraction=0.05, tta=8,
    ),
}
# pcam-cpu for one GPU and the full data: 4× wider, bigger batches with the LR scaled along, a
# longer warm-up, mixed precision, and augmentation as the model's first layers, so the host
# only reads batches and 2 host cores keep up (benchmarks/pipeline.py).
RECIPES["pcam-gpu"] = RECIPES["pcam-cpu"] | dict(
    model_kwargs={"widths": [64, 128, 256, 512], "stem": 64}, batch_size=512, lr=4e-3,
    warmup_epochs=1, mixed_precision="auto", augment_on="model", workers=2,
)
# fmt: on


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


def smoke() -> bool:
    """True when ``PCAM_SMOKE`` (the tests') is 1/true/yes: prove the code path, fast."""
    return os.environ.get("PCAM_SMOKE", "").strip().lower() in ("1", "true", "yes")


def forced_mode() -> str | None:
    """``$PCAM_MODE`` ('gpu' or 'cpu'): the path the series takes (on a CPU, 'gpu' rehearses a
    GPU run). None: the device decides."""
    mode = os.environ.get("PCAM_MODE", "").strip().lower()
    if mode not in ("", "gpu", "cpu"):
        raise ValueError(f"PCAM_MODE={mode}: must be one of gpu, cpu (or unset)")
    return mode or None


def default_data_dir() -> Path:
    """$PCAM_DATA, else full data (data/full, a complete data/pcam, Kaggle's), else the sample."""
    from .sources import is_pcam_layout

    if os.environ.get("PCAM_DATA"):
        return Path(os.environ["PCAM_DATA"])
    root = project_root() / "data"
    if smoke():
        return root / "sample"
    if (root / "full" / "train_labels.csv").is_file():
        return root / "full"
    if is_pcam_layout(root / "pcam"):  # what pcam download --source pcam leaves when complete
        return root / "pcam"
    return KAGGLE_INPUT if on_kaggle() else root / "sample"


def default_cache_root() -> Path | None:
    """Where packed caches go (None: beside the data): $PCAM_CACHE_DIR; on Kaggle (read-only
    input) /kaggle/working; with persistent outputs ($PCAM_OUT) their ``cache/``, to survive."""
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


def _f(default, allowed: str | tuple = ""):
    """A field and what it allows: a range ("≥ 1 and ≤ 9") or a tuple of choices."""
    return field(default=default, metadata={"allowed": allowed})


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in its run directory.

    Checked by :func:`validate` whenever one is made; :meth:`from_recipe` starts from a recipe.
    """

    model: str = _f("cnn1", MODEL_NAMES)  # the network (pcamlib.models)
    data: str = ""  # dataset root (any layout) or a packed cache
    out: str = "runs/cnn1"  # run directory; rerun to resume
    epochs: int = _f(5, "≥ 1 and ≤ 10000")  # passes over the training rows
    batch_size: int = _f(64, "≥ 1 and ≤ 65536")  # per replica
    lr: float = _f(1e-4, "> 0 and ≤ 1")  # peak learning rate (× replicas)
    image_size: int | None = _f(None, f"≥ 1 and ≤ {MAX_IMAGE_SIZE}")  # input side; per model
    val_fraction: float = _f(0.25, "> 0 and ≤ 0.5")  # share of rows validating
    test_fraction: float = _f(0.2, "≥ 0 and ≤ 0.4")  # held out, same rows each run; 0: none
    seed: int = _f(42, "≥ 0 and ≤ 2147483647")  # splits, shuffling and initial weights
    weights: str | None = _f(None, ("imagenet", None))  # imagenet: a pretrained backbone
    trainable: bool | None = _f(None, (True, False, None))  # None: frozen with imagenet
    augment: bool = False  # random dihedral views
    shift: int = _f(0, "≥ 0 and ≤ 32")  # random shifts; more can lose the labelled centre
    color_jitter: float = _f(0.0, FRACTION)  # colour jitter strength
    hed_jitter: float = _f(0.0, FRACTION)  # HED stain jitter σ
    augment_on: str = _f("host", ("host", "model"))  # numpy while batching, or on the device
    stain_norm: str | None = _f(None, (None, "reinhard"))  # stain normalisation in the model
    optimizer: str = _f("adam", ("adam", "adamw", "sgd"))  # adamw decays weights
    weight_decay: float = _f(0.0, "≥ 0 and ≤ 1")  # adamw only
    schedule: str = _f("constant", ("constant", "cosine", "onecycle"))  # learning rate's
    warmup_epochs: float = _f(0.0, "≥ 0")  # linear warm-up, at most epochs
    label_smoothing: float = _f(0.0, FRACTION)  # of the 0/1 targets
    early_stopping: int | None = _f(None, "≥ 1")  # patience: epochs without a val-AUC gain
    mixed_precision: str = _f("auto", PRECISION_MODES)  # auto: by device
    strategy: str = _f("auto", STRATEGIES)  # distribution over this machine's GPUs
    tensorboard: bool = False  # write TensorBoard logs
    steps_per_epoch: int | None = _f(None, "≥ 1")  # cap on batches per epoch
    val_limit: int | None = _f(None, "≥ 2")  # validate on a class-balanced subset of N rows
    workers: int = _f(1, "≥ 1 and ≤ 256")  # threads preparing batches
    split: str | None = _f(None, ("stratified", "slide", "pcam"))  # None: pcam on PCam data
    groups_csv: str | None = None  # patch→slide csv (id,wsi), for split slide
    cache_dir: str | None = None  # where packed caches go; None: beside the data
    exclude_bad: bool = False  # leave out unreadable items (listed in excluded.csv)
    recipe: str | None = None  # the recipe from_recipe started from, one of RECIPES
    tta: int = _f(1, TTA_VIEWS)  # views evaluate/predict use by default
    init: str | None = None  # start weights: "pretrained", a run directory or a .keras file
    model_kwargs: dict = field(default_factory=dict)  # the model's MODEL_KWARGS

    def __post_init__(self) -> None:
        auto_split = self.split is None
        if auto_split:
            self.split = "pcam" if pcam_data(self.data) else "stratified"
        validate(self, auto_split)

    @classmethod
    def from_recipe(cls, name: str, **overrides) -> TrainConfig:
        """Recipe ``name`` with ``overrides``, which win even where they equal a default. Another
        model keeps its own input size and arguments, another optimizer drops the recipe's weight
        decay, and PCam's own splits drop its fractions."""
        if name not in RECIPES:
            raise SettingError("recipe", name, f"must be one of {', '.join(RECIPES)}")
        values, drop = copy.deepcopy(RECIPES[name]), set()
        if overrides.get("model", values["model"]) != values["model"]:
            drop |= {"image_size", "model_kwargs"}
        if overrides.get("optimizer", values["optimizer"]) != values["optimizer"]:
            drop.add("weight_decay")
        split = overrides.get("split") or ("pcam" if pcam_data(overrides.get("data", "")) else None)
        if split == "pcam":
            drop |= set(PCAM_UNUSED)
        values = {k: v for k, v in values.items() if k not in drop}
        return cls(**{**values, **overrides, "recipe": name})

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


def validate(config: TrainConfig, auto_split: bool = False) -> None:
    """Refuse (SettingError) a config whose settings cannot all be honoured."""
    if config.recipe not in (None, *RECIPES):
        raise SettingError("recipe", config.recipe, f"must be one of {', '.join(RECIPES)}")
    for f in dataclasses.fields(config):
        _check_field(f, getattr(config, f.name))
    if not isinstance(config.out, str | os.PathLike) or not str(config.out):
        raise SettingError("out", config.out, "a run directory path")
    _check_model(config)
    if config.warmup_epochs > config.epochs:
        allowed = f"at most the number of epochs ({config.epochs})"
        raise SettingError("warmup_epochs", config.warmup_epochs, allowed)
    if config.weight_decay > 0 and config.optimizer != "adamw":
        allowed = f"only adamw uses weight decay, not optimizer {config.optimizer}"
        raise SettingError("weight_decay", config.weight_decay, allowed)
    if config.groups_csv is not None and config.split != "slide":
        allowed = "a patch→slide map is only used with split slide"
        raise SettingError("groups_csv", config.groups_csv, allowed)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in PCAM_UNUSED if config.split == "pcam" else ():  # PCam has val and test rows
        if getattr(config, name) != defaults[name]:
            how = " (the default on PCam's HDF5 layout)" if auto_split else ""
            allowed = f"not used with split pcam{how}, whose val and test rows are PCam's valid "
            allowed += "and test splits; leave it unset, or choose split stratified to carve them"
            raise SettingError(name, getattr(config, name), allowed + " out of PCam train")


def _check_field(f: dataclasses.Field, value) -> None:
    """A field's value against its type (the annotation's text) and what it allows."""
    allowed = f.metadata.get("allowed")
    if isinstance(allowed, tuple):
        if not any(value == o and type(value) is type(o) for o in allowed):
            raise SettingError(f.name, value, "must be one of " + ", ".join(map(repr, allowed)))
    elif allowed:
        if problem := range_problem(value, allowed, f.type.startswith("int"), "None" in f.type):
            raise SettingError(f.name, value, problem)
    elif f.type == "bool" and not isinstance(value, bool):
        raise SettingError(f.name, value, "must be one of True, False")


def _check_model(config: TrainConfig) -> None:
    """Settings that depend on the model: weights, trainable, model_kwargs and image_size."""
    model, kwargs, size = config.model, config.model_kwargs, config.image_size
    backbones = ", ".join(BACKBONE_NAMES)
    if config.weights == "imagenet" and model not in BACKBONE_NAMES:
        allowed = f"{model} has no pretrained weights; only {backbones} have (or no weights)"
        raise SettingError("weights", "imagenet", allowed)
    if config.trainable is False and model not in BACKBONE_NAMES:
        allowed = f"only the backbones {backbones} can be frozen, not {model}"
        raise SettingError("trainable", False, allowed)
    if not isinstance(kwargs, dict):
        raise SettingError("model_kwargs", kwargs, "a dict of the model's keyword arguments")
    for key, value in kwargs.items():
        if problem := _kwarg_problem(model, key, value):
            raise SettingError("model_kwargs", dict(kwargs), problem)
    # cnn1/cnn2 (two blocks of valid 3×3 convs and a 2×2 pool) need ≥ 16 pixels, the backbones
    # ≥ 32; pcamnet centre-crops the patch and halves it between stages and in a stem.
    if model == "pcamnet":
        halvings = len(kwargs.get("widths", (32, 64, 128, 256))) - 1 + bool(kwargs.get("stem"))
        low, high = 2**halvings, PATCH_SIDE
    else:
        low, high = (32 if model in BACKBONE_NAMES else 16), MAX_IMAGE_SIZE
    if size is not None and not low <= size <= high:
        what = "centre-crops" if model == "pcamnet" else "takes"
        raise SettingError("image_size", size, f"{model} {what} {low} to {high} pixels")


def _kwarg_problem(model: str, key: str, value) -> str | None:
    """What is wrong with ``model_kwargs[key]`` for ``model``, or None."""
    if key not in MODEL_KWARGS[model]:
        return f"{model} takes {', '.join(MODEL_KWARGS[model]) or 'none'}, not {key!r}"
    if key != "widths":
        problem = range_problem(value, KWARG_RANGES[key], integer=key == "stem")
        return problem and f"{key} {problem}"
    widths = value if isinstance(value, list | tuple) else ()
    if not widths or any(range_problem(w, KWARG_RANGES[key], True) for w in widths):
        return "widths must be a non-empty list of integers ≥ 1 (channels per stage)"
    return None


def check_paths(config: TrainConfig, need_data: bool = True) -> None:
    """Files a run reads must exist, and its run directory must not be a file."""
    data = str(config.data)
    if need_data and not data:
        raise SettingError("data", config.data, "the dataset to train on (a path)")
    if need_data and not Path(data).exists():
        raise SettingError("data", config.data, "no such file or folder")
    if config.groups_csv is not None and not Path(config.groups_csv).is_file():
        raise SettingError("groups_csv", config.groups_csv, "no such file")
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise SettingError("out", config.out, "is a file; give a run directory")
