"""Metrics to compare PCam models (ROC AUC with DeLong intervals, ECE, Youden threshold) and
batched, optionally test-time-augmented, tumour-probability inference."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm
from tqdm import tqdm

from .augment import N_DIHEDRAL, dihedral_views
from .sources import first_bad, labels01, vector


def validate_binary(
    y_true: Any, y_prob: Any, name: str = "y_prob"
) -> tuple[np.ndarray, np.ndarray]:
    """Check labels/probabilities once, so every metric and plot fails with the same message."""
    yt, yp = labels01(y_true, "y_true"), vector(y_prob, name)
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} rows but {name} has {len(yp)}")
    if yp.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real probabilities; got dtype {yp.dtype}")
    yp = yp.astype(np.float64)
    bad = ~((yp >= 0.0) & (yp <= 1.0))  # NaN fails both comparisons
    if bad.any():
        raise ValueError(
            f"{name} must hold probabilities (sigmoid outputs, not logits); "
            + first_bad(bad, yp, "value(s) non-finite or outside [0, 1]")
        )
    return yt, yp


def require_both_classes(yt: np.ndarray) -> None:
    """ROC/PR AUC are undefined with one class, so refuse instead of returning NaN."""
    if (n_pos := int(yt.sum())) in (0, len(yt)):
        raise ValueError(
            f"y_true contains only class {'1 (tumour)' if n_pos else '0 (normal)'} ({len(yt)} "
            "rows); ROC AUC and PR AUC need both classes - evaluate on a split with positives "
            "and negatives"
        )


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) * |observed tumour rate_b - mean p_b| over the right-closed bins of
    :func:`sklearn.calibration.calibration_curve` (the first holds 0): sum |bin's sum of p - y|."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    yt, yp = validate_binary(y_true, y_prob)
    bins = np.searchsorted(np.linspace(0.0, 1.0, int(n_bins) + 1)[1:-1], yp)
    return float(np.abs(np.bincount(bins, weights=yp - yt)).sum() / len(yp))


def _placements(yt: np.ndarray, yp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placements: each positive's share of negatives below it, each negative's share
    of positives above it (ties count one half, as midranks do); the AUC is the mean of either."""
    pos, neg = yp[yt == 1], yp[yt == 0]
    m = len(pos)
    ranks = rankdata(np.concatenate([pos, neg]))
    return (ranks[:m] - rankdata(pos)) / len(neg), 1.0 - (ranks[m:] - rankdata(neg)) / m


def _z(level: float) -> float:
    """The normal quantile of a two-sided ``level`` interval (refuses 95 for 0.95)."""
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def auc_ci(y_true: Any, y_prob: Any, level: float = 0.95) -> tuple[float, float, float]:
    """ROC AUC and its DeLong (1988) confidence interval: ``(auc, lo, hi)``, clipped to [0, 1].

    var(AUC) = var(positives' placements)/n_pos + var(negatives' placements)/n_neg; the interval
    is auc ± z·se (no resampling, so no seed). A perfectly separated set gives [1, 1].
    """
    z = _z(level)
    yt, yp = validate_binary(y_true, y_prob)
    require_both_classes(yt)
    v10, v01 = _placements(yt, yp)
    m, n = len(v10), len(v01)
    auc = float(v10.mean())
    var = (v10.var(ddof=1) if m > 1 else 0.0) / m + (v01.var(ddof=1) if n > 1 else 0.0) / n
    half = z * math.sqrt(var)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def auc_difference_ci(
    y_true: Any, prob_a: Any, prob_b: Any, level: float = 0.95
) -> tuple[float, float, float, float]:
    """Paired DeLong test of two models scored on the same patches: ``(diff, lo, hi, p)``.

    ``diff`` = AUC(a) − AUC(b). Two models usually err on the same hard patches, so the paired
    variance is far smaller than two separate intervals suggest: overlapping CIs can differ.
    """
    z = _z(level)
    yt, pa = validate_binary(y_true, prob_a, "prob_a")
    _, pb = validate_binary(y_true, prob_b, "prob_b")
    require_both_classes(yt)
    (a10, a01), (b10, b01) = _placements(yt, pa), _placements(yt, pb)
    if len(a10) < 2 or len(a01) < 2:
        raise ValueError("a paired AUC test needs at least two patches of each class")
    diff = float(a10.mean() - b10.mean())
    se = math.sqrt((a10 - b10).var(ddof=1) / len(a10) + (a01 - b01).var(ddof=1) / len(a01))
    if se == 0:  # identical placements: the difference is exact
        return diff, diff, diff, 1.0 if diff == 0 else 0.0
    return diff, diff - z * se, diff + z * se, 2 * NormalDist().cdf(-abs(diff) / se)


def youden_threshold(y_true: Any, y_prob: Any) -> float:
    """The threshold that maximises Youden's J = sensitivity + specificity - 1 (ties: highest);
    chosen on validation rows, then applied unchanged to the test rows."""
    yt, yp = validate_binary(y_true, y_prob)
    require_both_classes(yt)
    fpr, tpr, thr = skm.roc_curve(yt, yp, drop_intermediate=False)
    j = np.where(np.isfinite(thr) & (thr <= 1.0), tpr - fpr, -np.inf)
    return float(thr[int(np.argmax(j))])


def binary_metrics(
    y_true: Any,
    y_prob: Any,
    threshold: float = 0.5,
    operating_point: float | None = None,
) -> dict[str, float]:
    """One dict of the ranking, thresholded and calibration metrics used to compare models.

    Tumour is predicted when ``y_prob >= threshold`` (the rule of ``sklearn.metrics.roc_curve``).
    With ``operating_point`` (a target sensitivity such as 0.95), ``op_threshold`` is the
    highest threshold whose sensitivity reaches it, with ``op_sensitivity``/``op_specificity``.
    """
    if not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in [0, 1]; got {threshold!r}")
    yt, yp = validate_binary(y_true, y_prob)
    require_both_classes(yt)
    y_hat = (yp >= threshold).astype(np.int64)
    out = dict(zip(("roc_auc", "roc_auc_lo", "roc_auc_hi"), auc_ci(yt, yp), strict=True))
    out |= {
        "pr_auc": float(skm.average_precision_score(yt, yp)),
        "accuracy": float(skm.accuracy_score(yt, y_hat)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(yt, y_hat)),
        "sensitivity": float(skm.recall_score(yt, y_hat)),
        "specificity": float(skm.recall_score(yt, y_hat, pos_label=0)),
        "log_loss": float(skm.log_loss(yt, yp, labels=[0, 1])),
        "ece": expected_calibration_error(yt, yp, n_bins=10),
        "threshold": float(threshold),
        "n": int(len(yt)),
        "n_pos": int(yt.sum()),
    }
    if operating_point is not None:
        target = float(operating_point)
        if not (0.0 < target <= 1.0):
            raise ValueError(f"operating_point is a target sensitivity in (0, 1]; got {target!r}")
        fpr, tpr, thr = skm.roc_curve(yt, yp, drop_intermediate=False)
        # tpr is non-decreasing as thresholds fall, so the first hit keeps the most specificity.
        i = int(np.argmax(tpr >= target - 1e-12))
        out["op_target_sensitivity"], out["op_threshold"] = target, float(thr[i])
        out["op_sensitivity"], out["op_specificity"] = float(tpr[i]), float(1.0 - fpr[i])
    return out


def _predict_batch(model: Any, x: np.ndarray, start: int) -> np.ndarray:
    """Run one batch and insist on one probability in [0, 1] per image."""
    y = model.predict_on_batch(x)
    if isinstance(y, (list, tuple, dict)):
        raise ValueError(f"model must have a single (B, 1) sigmoid output; got {type(y).__name__}")
    y = np.asarray(y, dtype=np.float32)
    if y.shape not in ((len(x),), (len(x), 1)):
        raise ValueError(
            f"model output for images {start}..{start + len(x) - 1} has shape {y.shape}; "
            f"expected ({len(x)}, 1) sigmoid probabilities"
        )
    y = y.reshape(-1)
    bad = ~((y >= 0.0) & (y <= 1.0))  # NaN fails both comparisons
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"model produced a non-finite or out-of-[0, 1] output ({y[i]}) for image {start + i}; "
            "predict_proba expects a sigmoid output, not logits"
        )
    return y


def predict_proba(
    model: Any,
    images: Any,
    *,
    rows: np.ndarray | None = None,
    batch_size: int = 256,
    tta: int = 1,
    progress: bool = True,
    per_view: bool = False,
) -> np.ndarray:
    """Tumour probabilities (N,) float32, streamed in batches so a 6 GB memmap never loads whole.

    ``tta=8`` averages the sigmoid outputs over the 8 dihedral views of each patch;
    ``per_view`` returns them unaveraged, (N, tta), the patch as it is first.
    ``images`` only needs ``len()`` and slicing that returns uint8 NHWC arrays; with ``rows``,
    only those rows, read batch by batch (a memmap takes an index array too).
    """
    if tta not in (1, N_DIHEDRAL):
        raise ValueError(f"tta must be 1 or 8; got {tta!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    n, batch_size = len(images if rows is None else rows), int(batch_size)
    out = np.empty((n, tta), dtype=np.float32)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, disable=not progress, desc=f"predict (tta={tta})", unit="batch"):
        batch = slice(start, start + batch_size)
        x = np.asarray(images[batch] if rows is None else images[rows[batch]])
        if x.ndim != 4 or len(x) != min(batch_size, n - start):
            raise ValueError(
                f"images[{start}:{start + batch_size}] gave {x.shape}, not (B, H, W, C)"
            )
        views = [x] if tta == 1 else dihedral_views(x)
        out[start : start + len(x)] = np.stack([_predict_batch(model, v, start) for v in views], 1)
    return out if per_view else out.mean(axis=1, dtype=np.float64).astype(np.float32)
