"""Named training recipes: every setting that makes a result, under one name.

A recipe fills in the fields of a :class:`~pcamlib.config.TrainConfig` that its caller did not
set: ``TrainConfig(recipe="pcam-cpu", epochs=5)`` or ``pcam train --recipe pcam-cpu --epochs 5``
keep 5 epochs, even where the value given equals TrainConfig's default.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from .limits import SettingError

RECIPES: dict[str, dict] = {
    # 20k PCam patches in < 30 min on a 2-core CPU (TF backend); README has the measured numbers.
    # The whole 96-px patch through a stride-2 stem: the tissue around the labelled centre, for
    # 1.06-1.19× the CPU per step of the earlier 64-px centre crop (widths 16-128), which scored
    # 0.9385 valid AUC (TTA×8) against 0.9531 [0.9461, 0.9601] with this model.
    # Dihedral views, ±4 px shifts and mild colour jitter fight overfitting on 20k patches.
    # On a CPU the numpy (host) augmentation costs less CPU than the same layers in the TF
    # graph. HED stain jitter is not part of it: hed_jitter=0.1 on the 64-px recipe scored
    # 0.9353 [0.9269, 0.9437] valid AUC with TTA×8, no gain over 0.9385 without (README).
    "pcam-cpu": dict(
        model="pcamnet",
        image_size=96,
        model_kwargs={"widths": [24, 48, 96, 192], "stem": 24},
        batch_size=128,
        epochs=20,
        lr=2e-3,
        optimizer="adamw",
        weight_decay=0.01,
        schedule="cosine",
        warmup_epochs=0.5,
        augment=True,
        shift=4,
        color_jitter=0.1,
        val_fraction=0.05,
        tta=8,
    ),
}
# pcam-cpu scaled for one GPU and the full data (220k Kaggle / 262k PCam patches): 4× wider,
# bigger batches with the LR scaled along, a longer warm-up, mixed precision, and the
# augmentation as the model's first layers, on the GPU: the host only reads batches
# (benchmarks/pipeline.py: a few µs of host CPU per image), so 2 host cores keep up.
# The whole 96-px patch through a stride-2 stem as wide as the first stage, as in pcam-cpu,
# chosen by measurement over the 64-px centre crop: at pcam-cpu's widths, this recipe's other
# settings and 6 epochs on the 20k PCam patches (CPU), +0.0046 [-0.0003, +0.0095] valid AUC
# (TTA×8, paired DeLong, p = 0.064) once BatchNorm statistics were re-estimated (as trained,
# 222 steps left both held down by unsettled BN averages), for 0.66× the crop's convolution
# multiply-adds; pcam-cpu's own +0.0178 [+0.0129, +0.0227] points the same way
# (docs/results.md). Unmeasured at full size: no GPU was available.
RECIPES["pcam-gpu"] = {
    **RECIPES["pcam-cpu"],
    "model_kwargs": {"widths": [64, 128, 256, 512], "stem": 64},
    "batch_size": 512,
    "lr": 4e-3,
    "warmup_epochs": 1,
    "mixed_precision": "auto",
    "augment_on": "model",
    "workers": 2,
}


def recipe_values(name: str, given: Mapping[str, object]) -> dict:
    """The settings of recipe ``name`` for the fields not in ``given`` (field → value set).

    Choosing another model than the recipe's keeps that model's own input size and
    arguments; choosing another optimizer drops the recipe's weight decay.
    """
    if name not in RECIPES:
        raise SettingError("recipe", name, f"must be one of {', '.join(sorted(RECIPES))}")
    values = copy.deepcopy(RECIPES[name])
    skip = set(given)  # and what belongs to a model or optimizer the caller replaced
    if "model" in given and given["model"] != values.get("model"):
        skip |= {"image_size", "model_kwargs"}
    if "optimizer" in given and given["optimizer"] != values.get("optimizer"):
        skip.add("weight_decay")
    return {key: value for key, value in values.items() if key not in skip}
