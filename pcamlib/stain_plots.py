"""The stain figure: one patch under HED jitter and Reinhard normalisation, beside other sources.

Shows what the stain tools do before a model relies on them: the jittered copies should look
like plausible H&E from another lab, and the normalised patch like the sources' typical colour.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .augment import hed_jitter, reinhard_normalise, reinhard_target


def plot_stain_tools(
    patch: np.ndarray,
    sources: Mapping[str, np.ndarray],
    *,
    sigma: float = 0.1,
    n_jitter: int = 4,
    per_source: int = 6,
    seed: int = 0,
) -> Figure:
    """Top row: ``patch``, ``n_jitter`` HED jitters of strength ``sigma``, its Reinhard version.

    Below, one row of ``per_source`` patches per entry of ``sources`` (name → uint8 NHWC). The
    Reinhard target is measured on all the sources' patches together.
    """
    patch = np.asarray(patch)
    if patch.shape[-3:] != (96, 96, 3) or patch.dtype != np.uint8:
        raise ValueError(f"patch must be a 96×96×3 uint8 image; got {patch.shape} {patch.dtype}")
    if not sources:
        raise ValueError("give at least one source of patches to compare with")
    target = reinhard_target(np.concatenate([np.asarray(v) for v in sources.values()]))
    jittered = hed_jitter(np.repeat(patch[None], n_jitter, 0), sigma, np.random.default_rng(seed))
    rows = [
        [("original", patch)]
        + [(f"HED σ={sigma:g} #{i + 1}", im) for i, im in enumerate(jittered)]
        + [("Reinhard-normalised", reinhard_normalise(patch[None], *target)[0])]
    ]
    for name, images in sources.items():
        rows.append([(name if j == 0 else "", im) for j, im in enumerate(images[:per_source])])
    cols = max(len(rows[0]), per_source)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.8 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        for ax, (caption, image) in zip(ax_row, row, strict=False):
            ax.imshow(image)
            ax.set_title(caption, fontsize=8, loc="left")
        for ax in ax_row:
            ax.set_axis_off()
    fig.suptitle("Stain augmentation (HED jitter) and normalisation (Reinhard)", fontsize=10)
    fig.tight_layout()
    return fig
