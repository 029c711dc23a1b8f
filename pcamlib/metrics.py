"""Model comparison metrics (ROC AUC with DeLong intervals, ECE, Youden) and batched inference."""

import math
from statistics import NormalDist

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm
from tqdm import tqdm

from .sources import few, not01


def first_bad(mask: np.ndarray, values: np.ndarray, what: str) -> str:
    """``"3 bad labels: row 2: 7, row 5: -1, …"``: the offending rows of ``values`` by index."""
    rows, values = np.flatnonzero(mask), np.asarray(values).tolist()  # plain 2, not np.int64(2)
    return f"{len(rows)} {what}: " + few(rows, fmt=lambda i: f"row {i}: {values[i]!r}")


def vector(values, name: str) -> np.ndarray:
    """``values`` as a 1-D array, an (N, 1) column flattened; any other shape is an error."""
    v = np.asarray(values)
    v = v[:, 0] if v.ndim == 2 and v.shape[1] == 1 else v
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,) or (N, 1); got shape {v.shape}")
    return v


def labels01(values, name: str = "labels") -> np.ndarray:
    """1-D 0/1 labels as int64 (bools and (N, 1) columns accepted), or an error naming bad rows."""
    y = vector(values, name)
    if len(y) == 0:
        raise ValueError(f"{name} is empty")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise ValueError(f"{name} must be numeric 0/1 labels; got dtype {y.dtype}")
    if (bad := not01(y)).any():
        raise ValueError(f"{name} must contain only 0/1 labels; " + first_bad(bad, y, "bad labels"))
    return y.astype(np.int64)


def validate_binary(y_true, y_prob, name="y_prob", *, both=False) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels and float64 probabilities, checked the same way for every metric and plot;
    ``both``: refuse one class, as ROC/PR AUC are undefined then (rather than NaN)."""
    yt, yp = labels01(y_true, "y_true"), vector(y_prob, name)
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} rows but {name} has {len(yp)}")
    if yp.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real probabilities; got dtype {yp.dtype}")
    yp = yp.astype(np.float64)
    if (bad := ~((yp >= 0.0) & (yp <= 1.0))).any():  # NaN fails both comparisons
        raise ValueError(
            f"{name} must hold probabilities (sigmoid outputs, not logits); "
            + first_bad(bad, yp, "value(s) non-finite or outside [0, 1]")
        )
    if both and (n_pos := int(yt.sum())) in (0, len(yt)):
        raise ValueError(
            f"y_true contains only class {'1 (tumour)' if n_pos else '0 (normal)'} ({len(yt)} "
            "rows); ROC AUC and PR AUC need both classes: evaluate on a split with both"
        )
    return yt, yp


def expected_calibration_error(y_true, y_prob, n_bins: int = 10) -> float:
    """ECE: Σ_b |Σ (p − y)| / N over calibration_curve's right-closed bins (the first holds 0)."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    yt, yp = validate_binary(y_true, y_prob)
    bins = np.searchsorted(np.linspace(0.0, 1.0, int(n_bins) + 1)[1:-1], yp)
    return float(np.abs(np.bincount(bins, weights=yp - yt)).sum() / len(yp))


def _placements(yt: np.ndarray, yp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placements: each positive's share of negatives below it, each negative's share
    of positives above it (ties count one half, as midranks do); the AUC is the mean of either."""
    pos, neg = yp[yt == 1], yp[yt == 0]
    ranks, m = rankdata(np.concatenate([pos, neg])), len(pos)
    return (ranks[:m] - rankdata(pos)) / len(neg), 1.0 - (ranks[m:] - rankdata(neg)) / m


def _z(level: float) -> float:
    """The normal quantile of a two-sided ``level`` interval (refuses 95 for 0.95)."""
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def auc_ci(y_true, y_prob, level: float = 0.95) -> tuple[float, float, float]:
    """ROC AUC and its DeLong (1988) interval ``(auc, lo, hi)``, clipped to [0, 1]: auc ± z·se,
    var = var(positives' placements)/n_pos + var(negatives')/n_neg (no resampling, no seed)."""
    z = _z(level)
    v10, v01 = _placements(*validate_binary(y_true, y_prob, both=True))
    auc, var = float(v10.mean()), sum(v.var(ddof=1) / len(v) for v in (v10, v01) if len(v) > 1)
    return auc, max(0.0, auc - z * math.sqrt(var)), min(1.0, auc + z * math.sqrt(var))


def auc_difference_ci(y_true, prob_a, prob_b, level=0.95) -> tuple[float, float, float, float]:
    """Paired DeLong test of AUC(a) − AUC(b) on the same patches: ``(diff, lo, hi, p)``. Models
    err on the same hard patches, so overlapping separate CIs can still differ significantly."""
    z = _z(level)
    a10, a01 = _placements(*validate_binary(y_true, prob_a, "prob_a", both=True))
    b10, b01 = _placements(*validate_binary(y_true, prob_b, "prob_b"))
    if len(a10) < 2 or len(a01) < 2:
        raise ValueError("a paired AUC test needs at least two patches of each class")
    diff = float(a10.mean() - b10.mean())
    se = math.sqrt((a10 - b10).var(ddof=1) / len(a10) + (a01 - b01).var(ddof=1) / len(a01))
    if se == 0:  # identical placements: the difference is exact
        return diff, diff, diff, 1.0 if diff == 0 else 0.0
    return diff, diff - z * se, diff + z * se, 2 * NormalDist().cdf(-abs(diff) / se)


def youden_threshold(y_true, y_prob) -> float:
    """The threshold maximising Youden's J = sens + spec − 1 (ties: highest); set on validation."""
    fpr, tpr, thr = skm.roc_curve(*validate_binary(y_true, y_prob, both=True))
    return float(thr[int(np.argmax(np.where(thr <= 1.0, tpr - fpr, -np.inf)))])


def binary_metrics(y_true, y_prob, threshold=0.5, operating_point=None) -> dict[str, float]:
    """Ranking, thresholded (tumour when ``y_prob >= threshold``) and calibration metrics; with
    ``operating_point`` (a target sensitivity), ``op_*``: the highest threshold reaching it."""
    if not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in [0, 1]; got {threshold!r}")
    yt, yp = validate_binary(y_true, y_prob, both=True)
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
        if not (0.0 < (target := float(operating_point)) <= 1.0):
            raise ValueError(f"operating_point is a target sensitivity in (0, 1]; got {target!r}")
        fpr, tpr, thr = skm.roc_curve(yt, yp, drop_intermediate=False)
        i = int(np.argmax(tpr >= target - 1e-12))  # tpr rises as thresholds fall: first = best
        out["op_target_sensitivity"], out["op_threshold"] = target, float(thr[i])
        out["op_sensitivity"], out["op_specificity"] = float(tpr[i]), float(1.0 - fpr[i])
    return out


def _predict_batch(model, x: np.ndarray, start: int) -> np.ndarray:
    """One batch's outputs, insisting on one probability in [0, 1] per image."""
    y = model.predict_on_batch(x)
    if getattr(y, "shape", None) not in ((len(x),), (len(x), 1)):  # a list or dict has none
        got = f"has shape {y.shape}" if hasattr(y, "shape") else f"is a {type(y).__name__}"
        raise ValueError(
            f"model output for images {start}..{start + len(x) - 1} {got}; "
            f"expected one ({len(x)}, 1) sigmoid output"
        )
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if (bad := ~((y >= 0.0) & (y <= 1.0))).any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"model produced a non-finite or out-of-[0, 1] output ({y[i]}) for image "
            f"{start + i}; predict_proba expects a sigmoid output, not logits"
        )
    return y


def predict_proba(
    model, images, *, rows=None, batch_size=256, tta=1, progress=True, per_view=False
) -> np.ndarray:
    """Tumour probabilities (N,) float32, batch by batch so a 6 GB memmap never loads whole;
    ``images`` needs ``len()`` and slicing (with ``rows``: indexing) to uint8 NHWC arrays.
    ``tta=8``: the mean of the 8 dihedral views; ``per_view``: all, (N, tta), unchanged first."""
    from .augment import N_DIHEDRAL, dihedral_views  # keras: not at import (pcam predict's checks)

    if tta not in (1, N_DIHEDRAL):
        raise ValueError(f"tta must be 1 or 8; got {tta!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    n, size = len(images if rows is None else rows), int(batch_size)
    out = np.empty((n, tta), dtype=np.float32)
    bar = tqdm(range(0, n, size), disable=not progress, desc=f"predict (tta={tta})", unit="batch")
    for start in bar:
        batch = slice(start, start + size)
        x = np.asarray(images[batch] if rows is None else images[rows[batch]])
        if x.ndim != 4 or len(x) != min(size, n - start):
            raise ValueError(f"images[{start}:{start + size}] gave {x.shape}, not (B, H, W, C)")
        views = [x] if tta == 1 else dihedral_views(x)
        out[start : start + len(x)] = np.stack([_predict_batch(model, v, start) for v in views], 1)
    return out if per_view else out.mean(axis=1, dtype=np.float64).astype(np.float32)
