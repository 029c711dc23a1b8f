"""Evaluation metrics and batched, optionally test-time-augmented, tumour-probability inference."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
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
    n_pos = int(yt.sum())
    if n_pos == 0 or n_pos == len(yt):
        only = "1 (tumour)" if n_pos else "0 (normal)"
        raise ValueError(
            f"y_true contains only class {only} ({len(yt)} rows); ROC AUC and PR AUC need both "
            "classes - evaluate on a split with positives and negatives"
        )


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) * |observed tumour rate_b - mean p_b| over equal-width bins of p.

    The bins are those of :func:`sklearn.calibration.calibration_curve` (``strategy="uniform"``),
    which gives the per-bin rates but not the counts n_b: (e_i, e_i+1], the first also holding 0.
    Summed per bin, n_b * (mean p_b - rate_b) is just the sum of (p - y) over the bin.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    yt, yp = validate_binary(y_true, y_prob)
    bins = np.searchsorted(np.linspace(0.0, 1.0, int(n_bins) + 1)[1:-1], yp)
    return float(np.abs(np.bincount(bins, weights=yp - yt)).sum() / len(yp))


def _placements(yt: np.ndarray, yp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placements: each positive's share of negatives below it, each negative's share
    of positives above it (ties count one half); the AUC is the mean of either."""
    from scipy.stats import rankdata

    pos, neg = yp[yt == 1], yp[yt == 0]
    m = len(pos)
    ranks = rankdata(np.concatenate([pos, neg]))  # midranks: ties count one half
    v10 = (ranks[:m] - rankdata(pos)) / len(neg)
    v01 = 1.0 - (ranks[m:] - rankdata(neg)) / m
    return v10, v01


def _z(level: float) -> float:
    """The normal quantile of a two-sided ``level`` interval (refuses 95 for 0.95)."""
    from scipy.stats import norm

    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    return float(norm.ppf(0.5 + level / 2))


def auc_ci(y_true: Any, y_prob: Any, level: float = 0.95) -> tuple[float, float, float]:
    """ROC AUC and its DeLong confidence interval: ``(auc, lo, hi)``, clipped to [0, 1].

    DeLong et al. (1988): the AUC is the mean of the positives' placements among the negatives
    (ties count one half); its variance is var(placements of positives)/n_pos +
    var(placements of negatives)/n_neg, and the interval is auc ± z·se (normal approximation,
    no resampling, so no seed). A perfectly separated set has se = 0 and the interval [1, 1].
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
    variance (DeLong et al. 1988, with the covariance of the two placement vectors) is then far
    smaller than two separate intervals suggest: runs whose CIs overlap can still differ.
    """
    from scipy.stats import norm

    z = _z(level)
    yt, pa = validate_binary(y_true, prob_a, "prob_a")
    _, pb = validate_binary(y_true, prob_b, "prob_b")
    require_both_classes(yt)
    (a10, a01), (b10, b01) = _placements(yt, pa), _placements(yt, pb)
    if len(a10) < 2 or len(a01) < 2:
        raise ValueError("a paired AUC test needs at least two patches of each class")
    diff = float(a10.mean() - b10.mean())
    var = (a10 - b10).var(ddof=1) / len(a10) + (a01 - b01).var(ddof=1) / len(a01)
    se = math.sqrt(var)
    if se == 0:  # identical placements: the difference is exact
        return diff, diff, diff, 1.0 if diff == 0 else 0.0
    return diff, diff - z * se, diff + z * se, float(2 * norm.sf(abs(diff) / se))


def youden_threshold(y_true: Any, y_prob: Any) -> float:
    """The threshold that maximises Youden's J = sensitivity + specificity - 1 (ties: highest).

    Meant for validation rows: the threshold is then applied, unchanged, to the test rows.
    """
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
    tn, fp, fn, tp = skm.confusion_matrix(yt, y_hat, labels=[0, 1]).ravel()
    auc, lo, hi = auc_ci(yt, yp)
    out: dict[str, float] = {
        "roc_auc": auc,
        "roc_auc_lo": lo,
        "roc_auc_hi": hi,
        "pr_auc": float(skm.average_precision_score(yt, yp)),
        "accuracy": float(skm.accuracy_score(yt, y_hat)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(yt, y_hat)),
        "sensitivity": float(tp / (tp + fn)),
        "specificity": float(tn / (tn + fp)),
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
        out["op_target_sensitivity"] = target
        out["op_threshold"] = float(thr[i])
        out["op_sensitivity"] = float(tpr[i])
        out["op_specificity"] = float(1.0 - fpr[i])
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
    batch_size: int = 256,
    tta: int = 1,
    progress: bool = True,
    per_view: bool = False,
) -> np.ndarray:
    """Tumour probabilities (N,) float32, streamed in batches so a 6 GB memmap never loads whole.

    ``tta=8`` averages the sigmoid outputs over the 8 dihedral views of each patch;
    ``per_view`` returns them unaveraged, (N, tta), the patch as it is first.
    ``images`` only needs ``len()`` and slicing that returns uint8 NHWC arrays.
    """
    if tta not in (1, N_DIHEDRAL):
        raise ValueError(f"tta must be 1 or 8; got {tta!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    batch_size = int(batch_size)
    n = len(images)
    out = np.empty((n, tta), dtype=np.float32)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, disable=not progress, desc=f"predict (tta={tta})", unit="batch"):
        x = np.asarray(images[start : start + batch_size])
        expected = min(batch_size, n - start)
        if x.ndim != 4 or len(x) != expected:
            raise ValueError(
                f"images[{start}:{start + batch_size}] gave shape {x.shape}; "
                f"expected ({expected}, H, W, C)"
            )
        views = [x] if tta == 1 else dihedral_views(x)
        probs = [_predict_batch(model, v, start) for v in views]
        out[start : start + len(x)] = np.stack(probs, axis=1)
    return out if per_view else out.mean(axis=1, dtype=np.float64).astype(np.float32)
