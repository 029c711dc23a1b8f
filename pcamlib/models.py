"""Model zoo of the series: the reference's baselines and backbones, plus the CPU recipe net.

Every model takes raw uint8 patches (input ``patch``, 96×96×3) and returns the tumour
probability (output ``tumor_prob``, float32). Rescaling, resizing and ImageNet
preprocessing live *inside* the model, so inference can never be fed differently from
training. Built from ``keras`` alone, so the same code runs on TensorFlow, JAX or PyTorch.
"""

from __future__ import annotations

import os
import urllib.error
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from .config import MODEL_NAMES, PATCH_SIDE, SettingError

BACKBONES = {
    "vgg16": (keras.applications.VGG16, 0.3),
    "vgg19": (keras.applications.VGG19, 0.3),
    "resnet50": (keras.applications.ResNet50, 0.5),
}
# ImageNet means (BGR order) of the "caffe" preprocessing that VGG16/19 and ResNet50 expect.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="pcamlib")
class CaffePreprocess(layers.Layer):
    """RGB [0,255] → BGR minus ImageNet mean: keras.applications' ``preprocess_input``, as a layer.

    A layer (not a Lambda) so that ``.keras`` files load safely without unsafe deserialisation.
    """

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        bgr = keras.ops.flip(x, axis=-1)
        return bgr - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=self.compute_dtype)


@dataclass
class ConvBlock:
    """Conv→Conv→MaxPool, the reference's block; BatchNorm+ReLU after each conv when asked.

    Applied inline on a functional tensor (``ConvBlock(16)(x)``) rather than as a nested
    model, so summaries, diagrams and Grad-CAM see every conv layer.
    """

    n_filter: int
    kernel_sz: tuple[int, int] = (3, 3)
    activation: str = "relu"
    pool_sz: tuple[int, int] = (2, 2)
    batch_norm: bool = False
    name: str | None = None

    def __call__(self, x):
        prefix = f"{self.name}_" if self.name else ""
        for i in (1, 2):
            x = layers.Conv2D(
                self.n_filter,
                self.kernel_sz,
                activation=None if self.batch_norm else self.activation,
                name=f"{prefix}conv{i}",
            )(x)
            if self.batch_norm:
                x = layers.BatchNormalization(name=f"{prefix}bn{i}")(x)
                x = layers.Activation(self.activation, name=f"{prefix}act{i}")(x)
        return layers.MaxPooling2D(self.pool_sz, name=f"{prefix}pool")(x)


@dataclass
class TopBlock:
    """Flatten→Dense(n_units)→[Dropout]→Dense(1, sigmoid): the reference's classifier head."""

    n_units: int
    activation: str = "relu"
    drop_out: bool = False
    drop_rate: float = 0.5

    def __call__(self, x):
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(self.n_units, activation=self.activation, name="dense")(x)
        if self.drop_out:
            x = layers.Dropout(self.drop_rate, name="dropout")(x)
        return _probability(x)


def _probability(x):
    """The ``tumor_logit`` Dense, then a sigmoid ``tumor_prob``; float32 for mixed precision.

    Naming the logit lets Grad-CAM (and anyone) take gradients before the sigmoid saturates.
    """
    x = layers.Dense(1, dtype="float32", name="tumor_logit")(x)
    return layers.Activation("sigmoid", dtype="float32", name="tumor_prob")(x)


def _patch_input() -> keras.KerasTensor:
    return keras.Input(shape=(PATCH_SIDE, PATCH_SIDE, 3), dtype="uint8", name="patch")


def _reference_cnn(image_size: int, blocks: list[ConvBlock], top: TopBlock, name: str):
    """Rescale (and resize) the patch, then the ConvBlocks and the head: the baselines' layout."""
    inputs = _patch_input()
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if image_size != PATCH_SIDE:
        x = layers.Resizing(image_size, image_size, name="resize")(x)
    for block in blocks:
        x = block(x)
    return keras.Model(inputs, top(x), name=name)


def CNNModel1(image_size: int = 64) -> keras.Model:  # noqa: N802 (the reference's name)
    """ConvBlock(16) → ConvBlock(32) → Dense(256): the reference's first baseline.

    As specified it has 1,401,617 parameters at 64×64; the reference printed 1,401,873. The
    256 extra are exactly two BatchNorms (γ, β, mean, variance) over the 32 channels of
    ConvBlock(32), i.e. the printout had ``batch_norm=True`` there; no padding or size gives
    +256 (``same`` adds ~0.7 M), so we keep the documented architecture, not the printout.
    """
    blocks = [ConvBlock(16, name="block1"), ConvBlock(32, name="block2")]
    return _reference_cnn(image_size, blocks, TopBlock(256), "cnn1")


def CNNModel2(image_size: int = 64) -> keras.Model:  # noqa: N802 (the reference's name)
    """BatchNorm ConvBlocks 32/32 → Dense(512): the reference's 2nd baseline (2,799,073 params)."""
    blocks = [ConvBlock(32, batch_norm=True, name=f"block{i}") for i in (1, 2)]
    return _reference_cnn(image_size, blocks, TopBlock(512), "cnn2")


def backbone_model(
    name: str,
    weights: str | None = "imagenet",
    trainable: bool = False,
    image_size: int = 96,
    drop_rate: float | None = None,
) -> keras.Model:
    """VGG16/VGG19/ResNet50 with the reference's head.

    Head: Flatten→BN→Dense16→Dropout→Dense8→Dropout→BN→Dense1 (dropout 0.3 VGG, 0.5 ResNet).
    The backbone is built on the model's own tensor (``input_tensor=``), so its layers are
    the model's layers and Grad-CAM finds ``block5_conv3`` / ``conv5_block3_out`` by name.
    ``trainable=False`` freezes the backbone; a frozen BatchNormalization runs in inference
    mode in Keras 3, so its ImageNet statistics stay: to fine-tune, unfreeze all but those.
    """
    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None, got {weights!r}")
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    factory, default_rate = BACKBONES[name]
    rate = default_rate if drop_rate is None else drop_rate
    source = str(fetch_imagenet_weights(name)) if weights == "imagenet" else None
    inputs = x = _patch_input()
    if image_size != PATCH_SIDE:
        x = layers.Resizing(image_size, image_size, name="resize")(x)
    x = CaffePreprocess(name="imagenet_preprocess")(x)
    backbone = factory(weights=source, include_top=False, input_tensor=x)
    backbone.trainable = trainable
    x = layers.Flatten(name="flatten")(backbone.output)
    x = layers.BatchNormalization(name="head_bn1")(x)
    x = layers.Dense(16, activation="relu", name="head_dense16")(x)
    x = layers.Dropout(rate, name="head_dropout1")(x)
    x = layers.Dense(8, activation="relu", name="head_dense8")(x)
    x = layers.Dropout(rate, name="head_dropout2")(x)
    x = layers.BatchNormalization(name="head_bn2")(x)
    mode = "transfer" if not trainable else ("finetune" if weights else "scratch")
    return keras.Model(inputs, _probability(x), name=f"{name}_{mode}")


def PCamNet(
    crop: int = 64,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    drop_rate: float = 0.3,
    stem: int = 0,
) -> keras.Model:  # noqa: N802 (matches the other model constructors)
    """Compact BN-ReLU VGG-style net on the centre crop: the CPU recipe's model.

    The label depends on the centre 32×32 only, so a centre crop keeps the evidence at full
    resolution while cutting the cost ~(96/crop)²; global average pooling keeps it small.
    ``stem`` > 0 puts a stride-2 conv of that many channels before the stages: the net then
    sees the whole 96-px patch (the tissue around the centre) for about the cost of a 64 crop.
    """
    inputs = x = _patch_input()
    if crop != PATCH_SIDE:
        x = layers.CenterCrop(crop, crop, name="centre_crop")(x)
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    if stem:
        x = layers.Conv2D(stem, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
        x = layers.BatchNormalization(name="stem_bn")(x)
        x = layers.Activation("relu", name="stem_relu")(x)
    for i, width in enumerate(widths, start=1):
        for j in (1, 2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"s{i}_conv{j}")(x)
            x = layers.BatchNormalization(name=f"s{i}_bn{j}")(x)
            x = layers.Activation("relu", name=f"s{i}_relu{j}")(x)
        if i < len(widths):
            x = layers.MaxPooling2D(2, name=f"s{i}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(drop_rate, name="dropout")(x)
    return keras.Model(inputs, _probability(x), name="pcamnet")


def parameter_table(models: dict[str, keras.Model]):
    """Total / trainable / frozen parameters per model (a DataFrame): a summary's stable part."""
    import pandas as pd

    def count(weights) -> int:
        return sum(int(np.prod(w.shape)) for w in weights)

    counts = [
        [m.count_params(), count(m.trainable_weights), count(m.non_trainable_weights)]
        for m in models.values()
    ]
    return pd.DataFrame(counts, index=list(models), columns=["total", "trainable", "frozen"])


# The ImageNet files keras.applications loads for include_top=False: (origin folder, hash).
_KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/"
IMAGENET_FILES = {
    "vgg16": ("vgg16/", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
              "6d6bbae143d832006294945121d1f1fc"),
    "vgg19": ("vgg19/", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
              "253f8cb515780f3b799900260a226db6"),
    "resnet50": ("resnet/", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "4d473c1dd8becc155b73f8504c6f6626"),
}  # fmt: skip


class WeightsUnavailable(SettingError):
    """Explicit ImageNet weights that cannot be had: why, where to put them, the alternative."""

    def __init__(self, model: str, path: Path, url: str, reason: str):
        home = str(Path.home())
        folder = str(path.parent).replace(home, "~", 1) if home != "/" else str(path.parent)
        text = f"{reason}; put a copy of {url} in {folder}/ (Keras' cache, $KERAS_HOME/models "
        text += f"when set), or use weights=None to train {model} from scratch"
        super().__init__("weights", "imagenet", text)


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded files: $KERAS_HOME, else ~/.keras (/tmp/.keras read-only)."""
    if os.environ.get("KERAS_HOME"):
        return Path(os.environ["KERAS_HOME"])
    home = os.path.expanduser("~")
    return Path(home if os.access(home, os.W_OK) else "/tmp") / ".keras"


def fetch_imagenet_weights(name: str) -> Path:
    """The ImageNet weights file of backbone ``name``: from Keras' cache, else downloaded.

    Fails in one line (:class:`WeightsUnavailable`) without network or with a corrupt copy,
    before any model is built, so a run asked for ImageNet never starts from random weights.
    """
    folder, fname, file_hash = IMAGENET_FILES[name]
    url = _KERAS_WEIGHTS + folder + fname
    cache = keras_cache_dir()
    path = cache / "models" / fname
    had_copy = path.is_file()
    try:
        found = keras.utils.get_file(
            fname, url, cache_dir=str(cache), cache_subdir="models", file_hash=file_hash
        )
    except Exception as exc:  # Keras wraps URLError/HTTPError in a bare Exception
        cause = exc.__context__ if isinstance(exc.__context__, urllib.error.URLError) else exc
        why = str(getattr(cause, "reason", cause)).splitlines()[0]
        if isinstance(exc, ValueError):  # downloaded, but the checksum does not match
            reason = f"the download of {fname} is corrupt ({why})"
        else:
            lost = f"the cached {fname} is incomplete or corrupt and cannot be downloaded again"
            reason = f"{lost if had_copy else 'cannot download ' + fname} (no network? {why})"
        raise WeightsUnavailable(name, path, url, reason) from None
    return Path(found)


def resolve_weights(weights: str | None) -> str | None:
    """'imagenet' if the ImageNet weights can be had here (cached or downloadable), else None.

    Keeps the series running on offline machines: transfer learning then starts from random
    weights, with a warning that says why and what to do, instead of crashing on the download.
    An explicit ``TrainConfig(weights="imagenet")`` never falls back: it is refused instead.
    """
    if weights != "imagenet":
        return weights
    try:
        fetch_imagenet_weights("vgg16")
    except WeightsUnavailable as exc:
        warnings.warn(f"{exc}; backbones start from random weights (weights=None)", stacklevel=2)
        return None
    return "imagenet"


def build_model(
    name: str,
    *,
    image_size: int | None = None,
    weights: str | None = None,
    trainable: bool | None = None,
    **kwargs,
) -> keras.Model:
    """One entry point by short name: cnn1, cnn2, vgg16, vgg19, resnet50 or pcamnet.

    Backbones default to training from scratch when ``weights`` is None and to a frozen
    (transfer-learning) backbone when ``weights='imagenet'``, unless ``trainable`` says otherwise.
    """
    if name in BACKBONES:
        if trainable is None:
            trainable = weights is None
        return backbone_model(
            name, weights=weights, trainable=trainable, image_size=image_size or 96, **kwargs
        )
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if weights is not None:
        raise ValueError(f"{name} has no pretrained weights; use weights=None")
    if name == "pcamnet":
        return PCamNet(crop=image_size or 64, **kwargs)
    return (CNNModel1 if name == "cnn1" else CNNModel2)(image_size=image_size or 64, **kwargs)
