"""Every run setting's valid values, checked in one place before anything is written.

:class:`~pcamlib.config.TrainConfig` (Python API, notebooks) and ``pcam`` (every subcommand)
check through this table, so a value is refused the same way everywhere: in one line naming
the setting as the user spelled it (``lr`` in Python, ``--lr`` on the command line), the value
and what is allowed. It imports nothing heavy, so ``pcam --help`` and argument errors answer
at once, and the allowed values double as the CLI's help texts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Choices, kept here (not in models/devices, which import Keras) for the CLI's parser.
MODEL_NAMES = ("cnn1", "cnn2", "vgg16", "vgg19", "resnet50", "pcamnet")
BACKBONE_NAMES = ("vgg16", "vgg19", "resnet50")
STRATEGIES = ("auto", "none", "mirrored", "multiworker", "tpu", "data_parallel")
PRECISION_MODES = ("auto", "on", "off", "bfloat16", "float16")
PATCH_SIDE = 96  # pixels of every PCam / Kaggle patch
MAX_IMAGE_SIZE = 512  # a model input larger than this only upsamples 96 pixels at great cost


class SettingError(ValueError):
    """A setting outside its valid values; :meth:`render` spells it for Python or the CLI."""

    def __init__(self, setting: str, value, allowed: str | Callable[[str], str]):
        self.setting, self.value, self.allowed = setting, value, allowed
        super().__init__(self.render("python"))

    def render(self, style: str = "python") -> str:
        allowed = self.allowed(style) if callable(self.allowed) else self.allowed
        return f"{spelled(self.setting, self.value, style)}: {allowed}"


def spelled(setting: str, value, style: str = "python") -> str:
    """``lr=-1.0`` in Python, ``--lr -1`` on the command line."""
    if style != "cli":
        return f"{setting}={value!r}"
    flag = "--" + setting.replace("_", "-")
    if value is None:
        return f"{flag} none"
    if isinstance(value, bool):
        return f"{flag} {'yes' if value else 'no'}"
    return f"{flag} {format(value, 'g') if isinstance(value, float) else value}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else format(x, "g")


@dataclass(frozen=True)
class Number:
    """A closed or half-open numeric range; ``optional`` also allows None (unset)."""

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def ok(self, value) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, style: str = "python") -> str:
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '≥'} {_number(self.low)}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '≤'} {_number(self.high)}")
        what = "an integer" if self.kind is int else "a number"
        text = f"{what} {' and '.join(bounds)}" if bounds else what
        return text + (", or unset" if self.optional else "")


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values (None included where it means "off" or "default")."""

    options: tuple

    def ok(self, value) -> bool:
        return any(value is o or (value == o and type(value) is type(o)) for o in self.options)

    def describe(self, style: str = "python") -> str:
        if style == "cli":
            shown = [spelled("x", o, "cli").split(" ", 1)[1] for o in self.options]
        else:
            shown = [repr(o) for o in self.options]
        return "one of " + ", ".join(shown)


Rule = Number | Choice

# Every TrainConfig setting with a range or a set of values (text fields: data, out, cache_dir).
TRAIN_RULES: dict[str, Rule] = {
    "model": Choice(MODEL_NAMES),
    "epochs": Number(int, 1, 10000),
    "batch_size": Number(int, 1, 65536),
    "lr": Number(float, 0, 1, low_open=True),
    "image_size": Number(int, 1, MAX_IMAGE_SIZE, optional=True),  # per model: input_sizes()
    "val_fraction": Number(float, 0, 0.5, low_open=True),
    "test_fraction": Number(float, 0, 0.4),  # same rows for every run: pcamlib.protocol
    "seed": Number(int, 0, 2**31 - 1),
    "weights": Choice(("imagenet", None)),
    "trainable": Choice((True, False, None)),
    "augment": Choice((True, False)),
    "shift": Number(int, 0, 32),  # beyond 32 the labelled centre 32×32 can leave the patch
    "color_jitter": Number(float, 0, 1, high_open=True),
    "hed_jitter": Number(float, 0, 1, high_open=True),
    "augment_on": Choice(("host", "model")),
    "stain_norm": Choice((None, "reinhard")),
    "optimizer": Choice(("adam", "adamw", "sgd")),
    "weight_decay": Number(float, 0, 1),
    "schedule": Choice(("constant", "cosine", "onecycle")),
    "warmup_epochs": Number(float, 0),  # and ≤ epochs
    "label_smoothing": Number(float, 0, 1, high_open=True),
    "early_stopping": Number(int, 1, optional=True),
    "mixed_precision": Choice(PRECISION_MODES),
    "strategy": Choice(STRATEGIES),
    "tensorboard": Choice((True, False)),
    "steps_per_epoch": Number(int, 1, optional=True),
    "val_limit": Number(int, 2, optional=True),  # half per class
    "workers": Number(int, 1, 256),
    "split": Choice(("stratified", "slide")),
    "exclude_bad": Choice((True, False)),
    "tta": Choice((1, 8)),
}

# Arguments of evaluate / predict / pack.
RUN_RULES: dict[str, Rule] = {
    "batch_size": Number(int, 1, 65536),
    "operating_point": Number(float, 0, 1, low_open=True),  # a target sensitivity
    "workers": Number(int, 1, 256, optional=True),
    "tta": Choice((1, 8, None)),
}

# model_kwargs each model takes (pcamlib.models.build_model), with their ranges (None: widths).
_WIDTHS = "a non-empty list of integers ≥ 1 (channels per stage)"
MODEL_KWARGS: dict[str, dict[str, Rule | None]] = {
    "cnn1": {},
    "cnn2": {},
    **{name: {"drop_rate": Number(float, 0, 1, high_open=True)} for name in BACKBONE_NAMES},
    "pcamnet": {"widths": None, "drop_rate": Number(float, 0, 1, high_open=True)},
}


def allowed(setting: str, rules: Mapping[str, Rule] = TRAIN_RULES, style: str = "cli") -> str:
    """What ``setting`` takes, in words (the CLI's help texts use it)."""
    return rules[setting].describe(style)


def check_values(values: Mapping, rules: Mapping[str, Rule] = RUN_RULES) -> None:
    """Refuse the first value outside its rule (values without a rule are not checked)."""
    for name, value in values.items():
        rule = rules.get(name)
        if rule is not None and not rule.ok(value):
            raise SettingError(
                name, value, lambda style, n=name: "must be " + allowed(n, rules, style)
            )


def input_sizes(model: str, model_kwargs: Mapping | None = None) -> tuple[int, int]:
    """The (smallest, largest) input side a model can take, from its architecture.

    cnn1/cnn2: two blocks of two valid 3×3 convs and a 2×2 pool need ≥ 16 pixels;
    keras.applications backbones need ≥ 32; pcamnet centre-crops the 96-pixel patch and
    halves it between stages, so it needs 2^(stages-1) ≤ crop ≤ 96.
    """
    if model == "pcamnet":
        stages = len((model_kwargs or {}).get("widths", (32, 64, 128, 256)))
        return 2 ** max(stages - 1, 0), PATCH_SIDE
    return (32 if model in BACKBONE_NAMES else 16), MAX_IMAGE_SIZE


def check_train(config, given: set[str] | None = None) -> None:
    """Refuse a TrainConfig whose settings cannot all be honoured (Python spelling).

    ``given`` names the fields the caller set (the rest came from defaults or the recipe);
    it only makes messages say where a value came from.
    """
    from .recipes import RECIPES

    def source(name: str) -> str:
        if given is None or name in given or config.recipe is None:
            return ""
        return f" (from recipe {config.recipe})"

    if config.recipe is not None and config.recipe not in RECIPES:
        raise SettingError("recipe", config.recipe, f"must be one of {', '.join(sorted(RECIPES))}")
    for name, rule in TRAIN_RULES.items():
        value = getattr(config, name, None)
        if hasattr(config, name) and not rule.ok(value):
            raise SettingError(
                name, value, lambda s, n=name: "must be " + allowed(n, TRAIN_RULES, s) + source(n)
            )
    if not isinstance(config.out, str | os.PathLike) or not str(config.out):
        raise SettingError("out", config.out, "a run directory path")
    _check_model(config, source)
    if config.warmup_epochs > config.epochs:
        raise SettingError(
            "warmup_epochs",
            config.warmup_epochs,
            lambda s: f"at most the number of epochs ({spelled('epochs', config.epochs, s)})",
        )
    if config.weight_decay > 0 and config.optimizer != "adamw":
        raise SettingError(
            "weight_decay",
            config.weight_decay,
            lambda s: (
                "only adamw uses weight decay, not "
                + spelled("optimizer", config.optimizer, s)
                + source("weight_decay")
            ),
        )
    if config.groups_csv is not None and config.split != "slide":
        raise SettingError(
            "groups_csv",
            config.groups_csv,
            lambda s: f"a patch→slide map is only used with {spelled('split', 'slide', s)}",
        )


def _check_model(config, source: Callable[[str], str]) -> None:
    """Settings that depend on the model: weights, trainable, model_kwargs, image_size."""
    model, kwargs = config.model, config.model_kwargs
    backbones = ", ".join(BACKBONE_NAMES)
    if config.weights == "imagenet" and model not in BACKBONE_NAMES:
        raise SettingError(
            "weights",
            "imagenet",
            lambda s: (
                f"{model} has no pretrained weights; only {backbones} have "
                f"(or {spelled('weights', None, s)})"
            ),
        )
    if config.trainable is False and model not in BACKBONE_NAMES:
        raise SettingError(
            "trainable", False, f"only the backbones {backbones} can be frozen, not {model}"
        )
    if not isinstance(kwargs, Mapping):
        raise SettingError("model_kwargs", kwargs, "a dict of the model's keyword arguments")
    takes = MODEL_KWARGS[model]
    for key, value in kwargs.items():
        if key not in takes:
            names = ", ".join(takes) or "none"
            raise SettingError(
                "model_kwargs",
                dict(kwargs),
                f"{model} takes {names}, not {key!r}" + source("model_kwargs"),
            )
        rule = takes[key]
        if rule is None:  # widths
            ok = (
                isinstance(value, list | tuple)
                and len(value) > 0
                and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in value)
            )
            if not ok:
                raise SettingError("model_kwargs", dict(kwargs), f"{key} must be {_WIDTHS}")
        elif not rule.ok(value):
            raise SettingError("model_kwargs", dict(kwargs), f"{key} must be {rule.describe()}")
    if config.image_size is not None:
        low, high = input_sizes(model, kwargs)
        if not low <= config.image_size <= high:
            what = "centre-crops" if model == "pcamnet" else "takes"
            raise SettingError(
                "image_size",
                config.image_size,
                f"{model} {what} {low} to {high} pixels{source('image_size')}",
            )


def check_paths(config, need_data: bool = True) -> None:
    """Files a run reads must exist, and its run directory must not be a file."""
    data = str(config.data)
    if need_data and not data:
        raise SettingError("data", config.data, "the dataset to train on (a path or tfds:…)")
    if need_data and not data.startswith("tfds:") and not Path(data).exists():
        raise SettingError("data", config.data, "no such file or folder")
    if config.groups_csv is not None and not Path(config.groups_csv).is_file():
        raise SettingError("groups_csv", config.groups_csv, "no such file")
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise SettingError("out", config.out, "is a file; give a run directory")
