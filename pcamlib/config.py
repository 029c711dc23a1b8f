"""A run's settings (TrainConfig: a bad one is refused in one line before anything is written),
the recipes, and where the data is. Nothing heavy is imported: ``pcam --help`` is fast."""

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
# The model_kwargs each model takes (pcamlib.models.build_model), and their ranges.
MODEL_KWARGS = {"cnn1": (), "cnn2": (), "pcamnet": ("widths", "drop_rate", "stem")}
MODEL_KWARGS |= dict.fromkeys(BACKBONE_NAMES, ("drop_rate",))
KWARG_RANGES = {"drop_rate": (FRACTION, "float"), "stem": ("≥ 0 and ≤ 1024", "int")}
_OPS = {"≥": operator.ge, ">": operator.gt, "≤": operator.le, "<": operator.lt}
KAGGLE_INPUT = Path("/kaggle/input/histopathologic-cancer-detection")  # Kaggle Notebooks
KAGGLE_WORKING = Path("/kaggle/working")  # the only writable, kept folder there


class SettingError(ValueError):
    """A setting outside its valid values: its name and value, and what is allowed."""

    def __init__(self, setting: str, value, allowed: str):
        self.setting, self.value, self.allowed = setting, value, allowed
        super().__init__(f"{setting}={value!r}: {allowed}")


def value_problem(value, allowed: str | tuple, kind: str) -> str | None:
    """Why ``value`` is not one of the choices ``allowed``, or not a ``kind`` (a type's text:
    "int | None") in the range ``allowed`` ("> 0 and ≤ 1"); None if it is."""
    if isinstance(allowed, tuple):
        ok = any(value == o and type(value) is type(o) for o in allowed)
        return None if ok else "must be one of " + ", ".join(map(repr, allowed))
    integer, optional = kind.startswith("int"), "None" in kind
    if value is None and optional:
        return None
    number = not isinstance(value, bool) and isinstance(value, int if integer else int | float)
    limits = [part.split() for part in allowed.split(" and ")]
    if number and math.isfinite(value) and all(_OPS[op](value, float(x)) for op, x in limits):
        return None
    what = "an integer" if integer else "a number"
    return f"must be {what} {allowed}" + (", or unset" if optional else "")


# Named recipes: every setting that makes a result, and why (docs/results.md). pcam-cpu: 20k
# PCam patches in < 30 min on 2 CPU cores; pcam-gpu: 4× wider, for one GPU and the full data,
# with augmentation in the model so that 2 host cores keep up (benchmarks/pipeline.py).
# fmt: off
RECIPES: dict[str, dict] = {"pcam-cpu": dict(
    model="pcamnet", image_size=96, model_kwargs={"widths": [24, 48, 96, 192], "stem": 24},
    batch_size=128, epochs=20, lr=2e-3, optimizer="adamw", weight_decay=0.01, schedule="cosine",
    warmup_epochs=0.5, augment=True, shift=4, color_jitter=0.1, val_fraction=0.05, tta=8,
)}
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
    found = (d for d in (here, *here.parents) if (d / "data/sample/train_labels.csv").is_file())
    return next(found, Path(__file__).resolve().parent.parent)


def resolve_out(out: str | os.PathLike) -> Path:
    """A relative ``out`` is relative to the project root, wherever the command runs from."""
    out = Path(out).expanduser()
    return out if out.is_absolute() else project_root() / out


REPO_ROOT = project_root()
SAMPLE_DIR = REPO_ROOT / "data" / "sample"


def on_kaggle() -> bool:
    """A Kaggle Notebook with the competition attached as input."""
    return (KAGGLE_INPUT / "train_labels.csv").is_file()


def smoke() -> bool:
    """True when ``PCAM_SMOKE`` (the tests') is 1/true/yes: prove the code path, fast."""
    return os.environ.get("PCAM_SMOKE", "").strip().lower() in ("1", "true", "yes")


def forced_mode() -> str | None:
    """``$PCAM_MODE``: 'gpu' or 'cpu' (on a CPU, 'gpu' rehearses a GPU run); None: by device."""
    mode = os.environ.get("PCAM_MODE", "").strip().lower()
    if mode not in ("", "gpu", "cpu"):
        raise ValueError(f"PCAM_MODE={mode}: must be one of gpu, cpu (or unset)")
    return mode or None


def default_data_dir() -> Path:
    """$PCAM_DATA, else full data (data/full, a complete data/pcam, Kaggle's), else the sample."""
    from .pcam import is_pcam_layout

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


def pcam_data(data: str | os.PathLike) -> bool:
    """Is ``data`` PCam's HDF5 layout with all three splits, or a cache packed from one?"""
    from .pcam import PCAM_SPLITS, is_pcam_layout

    if not str(data) or is_pcam_layout(data):
        return bool(str(data))
    try:
        source = json.loads((Path(data) / "meta.json").read_text()).get("source", "")
    except (OSError, ValueError, AttributeError):
        return False
    return str(source).startswith(f"{PCAM_SPLITS}:")


def _f(default, allowed: str | tuple):  # a field and its range ("≥ 1 and ≤ 9") or choices
    return field(default=default, metadata={"allowed": allowed})


@dataclass
class TrainConfig:
    """What defines a training run (its ``config.json``), checked whenever one is made. Each
    field's trailing comment is its one explanation: ``pcam train --help`` shows it."""

    model: str = _f("cnn1", MODEL_NAMES)  # the network (pcamlib.models)
    data: str = ""  # dataset root (any layout) or a packed cache
    out: str = "runs/cnn1"  # run directory; rerun to resume
    epochs: int = _f(5, "≥ 1 and ≤ 10000")  # passes over the training rows
    batch_size: int = _f(64, "≥ 1 and ≤ 65536")  # per replica
    lr: float = _f(1e-4, "> 0 and ≤ 1")  # peak learning rate (× replicas)
    image_size: int | None = _f(None, f"≥ 1 and ≤ {MAX_IMAGE_SIZE}")  # model input side, per model
    val_fraction: float = _f(0.25, "> 0 and ≤ 0.5")  # share of rows validating
    test_fraction: float = _f(0.2, "≥ 0 and ≤ 0.4")  # held out, same rows each run; 0: none
    seed: int = _f(42, "≥ 0 and ≤ 2147483647")  # splits, shuffling and initial weights
    weights: str | None = _f(None, ("imagenet", None))  # imagenet: pretrained; none: random
    trainable: bool | None = _f(None, (True, False, None))  # backbone learns; none: not if imagenet
    augment: bool = False  # random dihedral views
    shift: int = _f(0, "≥ 0 and ≤ 32")  # random shifts of up to N pixels
    color_jitter: float = _f(0.0, FRACTION)  # colour jitter strength
    hed_jitter: float = _f(0.0, FRACTION)  # HED stain jitter σ
    augment_on: str = _f("host", ("host", "model"))  # host: numpy while batching; model: on device
    stain_norm: str | None = _f(None, (None, "reinhard"))  # stain normalisation in the model
    optimizer: str = _f("adam", ("adam", "adamw", "sgd"))  # adamw decays weights
    weight_decay: float = _f(0.0, "≥ 0 and ≤ 1")  # adamw only
    schedule: str = _f("constant", ("constant", "cosine", "onecycle"))  # the learning rate's
    warmup_epochs: float = _f(0.0, "≥ 0")  # linear warm-up, at most epochs
    label_smoothing: float = _f(0.0, FRACTION)  # of the 0/1 targets
    early_stopping: int | None = _f(None, "≥ 1")  # patience: epochs without a val-AUC gain
    mixed_precision: str = _f("auto", PRECISION_MODES)  # auto: by device
    strategy: str = _f("auto", STRATEGIES)  # distribution over this machine's GPUs
    tensorboard: bool = False  # write TensorBoard logs
    steps_per_epoch: int | None = _f(None, "≥ 1")  # cap on batches per epoch
    val_limit: int | None = _f(None, "≥ 2")  # validate on a class-balanced subset of N rows
    workers: int = _f(1, "≥ 1 and ≤ 256")  # threads preparing batches
    split: str | None = _f(None, ("stratified", "slide", "pcam"))  # unset: pcam on PCam's HDF5 data
    groups_csv: str | None = None  # patch→slide csv (id,wsi) for split slide (PCam HDF5: its meta)
    cache_dir: str | None = None  # where packed caches go; unset: see docs/cli.md
    exclude_bad: bool = False  # leave out unreadable items (listed in excluded.csv)
    recipe: str | None = None  # a named recipe: pcam-cpu or pcam-gpu; explicit settings win
    tta: int = _f(1, TTA_VIEWS)  # views evaluate/predict use by default
    init: str | None = None  # start weights: "pretrained" (pcam-cpu), a run directory or .keras
    model_kwargs: dict = field(default_factory=dict)  # the model's MODEL_KWARGS

    def __post_init__(self) -> None:
        auto_split = self.split is None
        if auto_split:
            self.split = "pcam" if pcam_data(self.data) else "stratified"
        validate(self, auto_split)

    @classmethod
    def from_recipe(cls, name: str, **overrides) -> TrainConfig:
        """Recipe ``name`` with ``overrides``, which win even where they equal a default. Another
        model drops its image_size and model_kwargs, another optimizer its weight_decay, and
        PCam's own splits its fractions."""
        if name not in RECIPES:
            raise SettingError("recipe", name, f"must be one of {', '.join(RECIPES)}")
        values = copy.deepcopy(RECIPES[name])
        split = overrides.get("split") or ("pcam" if pcam_data(overrides.get("data", "")) else None)
        drop = set(PCAM_UNUSED) if split == "pcam" else set()
        if overrides.get("model", values["model"]) != values["model"]:
            drop |= {"image_size", "model_kwargs"}
        if overrides.get("optimizer", values["optimizer"]) != values["optimizer"]:
            drop.add("weight_decay")
        values = {k: v for k, v in values.items() if k not in drop}
        return cls(**{**values, **overrides, "recipe": name})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        values = json.loads(text)
        if unknown := set(values) - {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**values)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def validate(config: TrainConfig, auto_split: bool = False) -> None:
    """Refuse (SettingError) a config whose settings cannot all be honoured."""
    if config.recipe not in (None, *RECIPES):
        raise SettingError("recipe", config.recipe, f"must be one of {', '.join(RECIPES)}")
    for f in dataclasses.fields(config):
        allowed = f.metadata.get("allowed", (True, False) if f.type == "bool" else "")
        if allowed and (problem := value_problem(getattr(config, f.name), allowed, f.type)):
            raise SettingError(f.name, getattr(config, f.name), problem)
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
    for name in PCAM_UNUSED if config.split == "pcam" else ():
        if getattr(config, name) != TrainConfig.__dataclass_fields__[name].default:
            how = " (the default on PCam's HDF5 layout)" if auto_split else ""
            allowed = f"not used with split pcam{how}, whose val and test rows are PCam's; leave "
            allowed += "it unset, or choose split stratified to carve them out of PCam train"
            raise SettingError(name, getattr(config, name), allowed)


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
        if key not in MODEL_KWARGS[model]:
            allowed = f"{model} takes {', '.join(MODEL_KWARGS[model]) or 'none'}, not {key!r}"
            raise SettingError("model_kwargs", dict(kwargs), allowed)
        if key == "widths":  # channels per stage
            widths = value if isinstance(value, list | tuple) and value else [None]
            bad = any(value_problem(w, "≥ 1", "int") for w in widths)
            problem = bad and "must be a non-empty list of integers ≥ 1 (channels per stage)"
        else:
            problem = value_problem(value, *KWARG_RANGES[key])
        if problem:
            raise SettingError("model_kwargs", dict(kwargs), f"{key} {problem}")
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
