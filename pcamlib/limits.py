"""Run settings' valid values, and the checks that refuse others before anything is written.

:class:`~pcamlib.config.TrainConfig`'s fields carry their rules; ``pcam``'s other subcommands
use :data:`RUN_RULES`. A value is refused the same way everywhere: in one line naming the
setting as the user spelled it (``lr`` in Python, ``--lr`` on the command line), the value and
what is allowed. It imports nothing heavy, so ``pcam --help`` and argument errors answer at
once, and the rules double as the CLI's types, choices and help texts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Choices, kept here (not in models/devices, which import Keras) for the CLI's parser.
MODEL_NAMES = ("cnn1", "cnn2", "vgg16", "vgg19", "resnet50", "pcamnet")
BACKBONE_NAMES = ("vgg16", "vgg19", "resnet50")
STRATEGIES = ("auto", "none", "mirrored")
PRECISION_MODES = ("auto", "on", "off", "bfloat16", "float16")
TTA_VIEWS = (1, 8)  # the patch alone, or its 8 dihedral views
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


def cli_value(value) -> str:
    """A value as the command line spells it: ``none``, ``yes``/``no``, ``1e-05``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, "g") if isinstance(value, float) else str(value)


def _name(setting: str, style: str = "python") -> str:
    """``val_fraction`` in Python, ``--val-fraction`` on the command line."""
    return f"--{setting.replace('_', '-')}" if style == "cli" else setting


def spelled(setting: str, value, style: str = "python") -> str:
    """``lr=-1.0`` in Python, ``--lr -1`` on the command line."""
    if style != "cli":
        return f"{setting}={value!r}"
    return f"--{setting.replace('_', '-')} {cli_value(value)}"


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
        if isinstance(value, bool) or not isinstance(value, self.kind | int):  # 2 is a float
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, style: str = "python") -> str:
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '≥'} {cli_value(self.low)}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '≤'} {cli_value(self.high)}")
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
        return "one of " + ", ".join(map(cli_value if style == "cli" else repr, self.options))

    def from_cli(self, text: str):
        """The option the command line spells ``text`` (``none`` → None, ``8`` → 8)."""
        return {cli_value(o): o for o in self.options}[text]


_WIDTH = Number(int, 1)


@dataclass(frozen=True)
class Widths:
    """pcamnet's channels per stage."""

    def ok(self, value) -> bool:
        return isinstance(value, list | tuple) and len(value) > 0 and all(map(_WIDTH.ok, value))

    def describe(self, style: str = "python") -> str:
        return "a non-empty list of integers ≥ 1 (channels per stage)"


Rule = Number | Choice | Widths
YES_NO = Choice((True, False))
FRACTION = Number(float, 0, 1, high_open=True)
COUNT = Number(int, 1, optional=True)

# Settings split="pcam" does not use: PCam's valid and test splits are the val and test rows.
PCAM_UNUSED = ("val_fraction", "test_fraction")

# Arguments of evaluate / predict / pack (TrainConfig's fields carry their own rules).
RUN_RULES: dict[str, Rule] = {
    "batch_size": Number(int, 1, 65536),
    "operating_point": Number(float, 0, 1, low_open=True),  # a target sensitivity
    "workers": Number(int, 1, 256, optional=True),
}

# model_kwargs each model takes (pcamlib.models.build_model), with their ranges.
MODEL_KWARGS: dict[str, dict[str, Rule]] = {
    "cnn1": {},
    "cnn2": {},
    **{name: {"drop_rate": FRACTION} for name in BACKBONE_NAMES},
    "pcamnet": {"widths": Widths(), "drop_rate": FRACTION, "stem": Number(int, 0, 1024)},
}


def check_values(
    values: Mapping,
    rules: Mapping[str, Rule],
    source: Callable[[str], str] = lambda name: "",
) -> None:
    """Refuse the first value outside its rule (values without a rule are not checked).

    ``source(name)`` tells where a value came from (a recipe), after what is allowed.
    """
    for name, value in values.items():
        rule = rules.get(name)
        if rule is not None and not rule.ok(value):
            raise SettingError(
                name, value, lambda s, r=rule, n=name: f"must be {r.describe(s)}{source(n)}"
            )


def check_train(config, given: set[str]) -> None:
    """Refuse a TrainConfig whose settings cannot all be honoured (Python spelling).

    ``given`` names the fields the caller set (the rest came from defaults or the recipe);
    it only makes messages say where a value came from.
    """

    def source(name: str) -> str:
        if name in given or config.recipe is None:
            return ""
        return f" (from recipe {config.recipe})"

    rules = {f.name: f.metadata.get("rule") for f in dataclasses.fields(config)}
    check_values({name: getattr(config, name) for name in rules}, rules, source)
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
    _check_pcam_split(config, given)
    if config.groups_csv is not None and config.split != "slide":
        raise SettingError(
            "groups_csv",
            config.groups_csv,
            lambda s: f"a patch→slide map is only used with {spelled('split', 'slide', s)}",
        )


def _check_pcam_split(config, given: set[str]) -> None:
    """With split 'pcam', a val or test fraction set to anything but its default is refused:
    it would not be used (TrainConfig resets those that came from a recipe)."""
    if config.split != "pcam":
        return
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    how = "" if "split" in given else " (the default on PCam's HDF5 layout)"
    for name in PCAM_UNUSED:
        value = getattr(config, name)
        if name in given and value != defaults[name]:
            raise SettingError(
                name,
                value,
                lambda s, n=name: (
                    f"not used with {spelled('split', 'pcam', s)}{how}, whose val and test rows "
                    f"are PCam's valid and test splits; leave {_name(n, s)} unset, or choose "
                    f"{spelled('split', 'stratified', s)} to carve the parts out of PCam train"
                ),
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
        if not takes[key].ok(value):
            raise SettingError(
                "model_kwargs", dict(kwargs), f"{key} must be {takes[key].describe()}"
            )
    if config.image_size is None:
        return
    # cnn1/cnn2: two blocks of two valid 3×3 convs and a 2×2 pool need ≥ 16 pixels; the
    # keras.applications backbones need ≥ 32; pcamnet centre-crops the 96-pixel patch and
    # halves it between stages (and once more in a stem), so it needs 2^(halvings) ≤ crop ≤ 96.
    if model == "pcamnet":
        halvings = len(kwargs.get("widths", (32, 64, 128, 256))) - 1 + bool(kwargs.get("stem"))
        low, high = 2**halvings, PATCH_SIDE
    else:
        low, high = (32 if model in BACKBONE_NAMES else 16), MAX_IMAGE_SIZE
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
        raise SettingError("data", config.data, "the dataset to train on (a path)")
    if need_data and not Path(data).exists():
        raise SettingError("data", config.data, "no such file or folder")
    if config.groups_csv is not None and not Path(config.groups_csv).is_file():
        raise SettingError("groups_csv", config.groups_csv, "no such file")
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise SettingError("out", config.out, "is a file; give a run directory")
