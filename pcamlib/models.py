"""The reference's baselines and backbones, and PCamNet: uint8 ``patch`` in, ``tumor_prob`` out;
rescaling, resizing, ImageNet preprocessing are *inside*: inference is fed as training was."""

import os
import urllib.error
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from keras import layers

from .config import MODEL_NAMES, PATCH_SIDE, SettingError

BACKBONES = {
    "vgg16": (keras.applications.VGG16, 0.3),
    "vgg19": (keras.applications.VGG19, 0.3),
    "resnet50": (keras.applications.ResNet50, 0.5),
}


@keras.saving.register_keras_serializable(package="pcamlib")
class CaffePreprocess(layers.Layer):
    """The backbones' ``preprocess_input`` as a layer, not a Lambda: no unsafe deserialisation."""

    def call(self, x):
        return keras.applications.vgg16.preprocess_input(keras.ops.cast(x, self.compute_dtype))


def ConvBlock(n_filter: int, name: str, batch_norm: bool = False):
    """3×3 Conv→Conv (BatchNorm+ReLU after each if asked)→MaxPool, the reference's block, applied
    inline (``ConvBlock(16, "b1")(x)``), not nested: summaries and Grad-CAM see every conv."""

    def apply(x):
        for i in (1, 2):
            act = None if batch_norm else "relu"
            x = layers.Conv2D(n_filter, 3, activation=act, name=f"{name}_conv{i}")(x)
            if batch_norm:
                x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
                x = layers.Activation("relu", name=f"{name}_act{i}")(x)
        return layers.MaxPooling2D(2, name=f"{name}_pool")(x)

    return apply


def TopBlock(n_units: int):
    """Flatten→Dense(n_units, relu)→Dense(1, sigmoid): the reference's classifier head."""

    def apply(x):
        x = layers.Flatten(name="flatten")(x)
        return _probability(layers.Dense(n_units, activation="relu", name="dense")(x))

    return apply


def _probability(x):
    """The ``tumor_logit`` Dense (named: Grad-CAM takes gradients before the sigmoid saturates),
    then the sigmoid ``tumor_prob``; float32 for mixed precision."""
    x = layers.Dense(1, dtype="float32", name="tumor_logit")(x)
    return layers.Activation("sigmoid", dtype="float32", name="tumor_prob")(x)


def _patch_input() -> keras.KerasTensor:
    return keras.Input(shape=(PATCH_SIDE, PATCH_SIDE, 3), dtype="uint8", name="patch")


def _reference_cnn(image_size: int, blocks: list, top, name: str):
    inputs = _patch_input()
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if image_size != PATCH_SIDE:
        x = layers.Resizing(image_size, image_size, name="resize")(x)
    for block in blocks:
        x = block(x)
    return keras.Model(inputs, top(x), name=name)


def CNNModel1(image_size: int = 64) -> keras.Model:
    """ConvBlock(16) → ConvBlock(32) → Dense(256): the reference's first baseline, 1,401,617
    parameters at 64×64. The reference printed 256 more, i.e. ``batch_norm=True`` in ConvBlock(32)
    (2 BNs × 4 × 32); no padding or size gives +256, so we keep the documented architecture."""
    blocks = [ConvBlock(16, "block1"), ConvBlock(32, "block2")]
    return _reference_cnn(image_size, blocks, TopBlock(256), "cnn1")


def CNNModel2(image_size: int = 64) -> keras.Model:
    """BatchNorm ConvBlocks 32/32 → Dense(512): the reference's 2nd baseline (2,799,073 params)."""
    blocks = [ConvBlock(32, f"block{i}", batch_norm=True) for i in (1, 2)]
    return _reference_cnn(image_size, blocks, TopBlock(512), "cnn2")


def _backbone(name: str, weights, trainable: bool, size: int, drop_rate=None) -> keras.Model:
    """VGG16/VGG19/ResNet50 on the model's own tensor (Grad-CAM finds ``block5_conv3`` /
    ``conv5_block3_out`` by name) under the reference's head (dropout 0.3 VGG, 0.5 ResNet). A
    frozen BatchNormalization runs in inference mode in Keras 3, keeping ImageNet statistics."""
    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None, got {weights!r}")
    factory, default_rate = BACKBONES[name]
    rate = default_rate if drop_rate is None else drop_rate
    source = str(fetch_imagenet_weights(name)) if weights == "imagenet" else None
    inputs = x = _patch_input()
    if size != PATCH_SIDE:
        x = layers.Resizing(size, size, name="resize")(x)
    x = CaffePreprocess(name="imagenet_preprocess")(x)
    backbone = factory(weights=source, include_top=False, input_tensor=x)
    backbone.trainable = trainable
    x = layers.Flatten(name="flatten")(backbone.output)
    x = layers.BatchNormalization(name="head_bn1")(x)
    for i, units in enumerate((16, 8), start=1):
        x = layers.Dense(units, activation="relu", name=f"head_dense{units}")(x)
        x = layers.Dropout(rate, name=f"head_dropout{i}")(x)
    x = layers.BatchNormalization(name="head_bn2")(x)
    mode = "transfer" if not trainable else ("finetune" if weights else "scratch")
    return keras.Model(inputs, _probability(x), name=f"{name}_{mode}")


def PCamNet(crop=64, widths=(32, 64, 128, 256), drop_rate=0.3, stem=0) -> keras.Model:
    """Compact BN-ReLU VGG-style net, the CPU recipe's. The label depends on the centre 32×32 only:
    a centre crop keeps it at full resolution for ~(crop/96)² of the cost; a ``stem`` (stride-2
    conv) sees the whole patch, the tissue around the centre, for about a 64 crop's cost."""
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
    kinds = ("weights", "trainable_weights", "non_trainable_weights")
    counts = [
        [sum(np.prod(w.shape, dtype=int) for w in getattr(m, k)) for k in kinds]
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


def fetch_imagenet_weights(name: str) -> Path:
    """Backbone ``name``'s ImageNet weights file, from Keras' cache or downloaded, else a one-line
    :class:`WeightsUnavailable` before any model is built: ImageNet never silently goes random."""
    folder, fname, file_hash = IMAGENET_FILES[name]
    url, home = _KERAS_WEIGHTS + folder + fname, os.path.expanduser("~")
    base = home if os.access(home, os.W_OK) else "/tmp"
    cache = Path(os.environ.get("KERAS_HOME") or Path(base) / ".keras")
    path = cache / "models" / fname
    had_copy = path.is_file()
    try:
        found = keras.utils.get_file(
            fname, url, cache_dir=str(cache), cache_subdir="models", file_hash=file_hash
        )
    except Exception as exc:  # Keras wraps URLError/HTTPError in a bare Exception
        cause = exc.__context__ if isinstance(exc.__context__, urllib.error.URLError) else exc
        why = str(getattr(cause, "reason", cause)).splitlines()[0]
        lost = f"the cached {fname} is incomplete or corrupt and cannot be downloaded again"
        reason = f"{lost if had_copy else 'cannot download ' + fname} (no network? {why})"
        if isinstance(exc, ValueError):  # downloaded, but the checksum does not match
            reason = f"the download of {fname} is corrupt ({why})"
        folder = str(path.parent).replace(home, "~", 1) if home != "/" else str(path.parent)
        text = f"{reason}; put a copy of {url} in {folder}/ (Keras' cache, $KERAS_HOME/models "
        text += f"when set), or use weights=None to train {name} from scratch"
        raise WeightsUnavailable("weights", "imagenet", text) from None
    return Path(found)


def resolve_weights(weights: str | None) -> str | None:
    """'imagenet' if the ImageNet weights can be had here, else None with a warning (why, what
    to do): offline notebooks go on from random weights; :func:`train` refuses instead."""
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
    """The model ``name`` (one of ``MODEL_NAMES``). A backbone is frozen (transfer learning) with
    ``weights='imagenet'`` and trained from scratch without, unless ``trainable`` says."""
    if name in BACKBONES:
        trainable = weights is None if trainable is None else trainable
        return _backbone(name, weights, trainable, image_size or 96, **kwargs)
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if weights is not None:
        raise ValueError(f"{name} has no pretrained weights; use weights=None")
    factory = {"cnn1": CNNModel1, "cnn2": CNNModel2, "pcamnet": PCamNet}[name]
    return factory(image_size or 64, **kwargs)
