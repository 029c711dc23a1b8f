"""Tests for pcamlib.metrics: metric values, validation, dihedral views and batched inference."""

import keras
import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from pcamlib.augment import dihedral, dihedral_views
from pcamlib.metrics import (
    auc_ci,
    auc_difference_ci,
    binary_metrics,
    expected_calibration_error,
    predict_proba,
    youden_threshold,
)

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
P = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])


# --------------------------------------------------------------------------- binary_metrics


def test_binary_metrics_hand_computed_example():
    m = binary_metrics(Y, P)
    # At 0.5: TN=3 (0.1, 0.2, 0.3), FP=1 (0.6), FN=1 (0.4), TP=3.
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    # 16 pos/neg pairs, only (0.4 < 0.6) is mis-ordered.
    assert m["roc_auc"] == pytest.approx(15 / 16)
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(Y, P))
    assert m["log_loss"] == pytest.approx(-np.mean(Y * np.log(P) + (1 - Y) * np.log(1 - P)))
    assert m["n"] == 8 and m["n_pos"] == 4
    assert "op_threshold" not in m
    assert all(isinstance(v, (int, float)) for v in m.values())


# --------------------------------------------------------------------------- AUC intervals


def _delong_by_pairs(y, p, z=1.959963984540054):
    """DeLong written from its definition, pair by pair (O(n_pos * n_neg))."""
    pos, neg = p[y == 1], p[y == 0]
    kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = kernel.mean(axis=1), kernel.mean(axis=0)
    auc = kernel.mean()
    se = np.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))
    return auc, max(0.0, auc - z * se), min(1.0, auc + z * se)


def test_auc_ci_hand_computed_example():
    # Placements: positives [3/4, 1, 1, 1], negatives [1, 1, 1, 3/4]; each variance 1/64.
    auc, lo, hi = auc_ci(Y, P)
    assert auc == pytest.approx(15 / 16)
    assert lo == pytest.approx(15 / 16 - 1.959963984540054 * np.sqrt(1 / 128))
    assert hi == 1.0  # clipped
    m = binary_metrics(Y, P)
    assert (m["roc_auc_lo"], m["roc_auc_hi"]) == pytest.approx((lo, hi))


def test_auc_ci_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.25, 300), 0, 1), 1)  # ties
    assert auc_ci(y, p) == pytest.approx(_delong_by_pairs(y, p))
    assert auc_ci(y, p)[0] == pytest.approx(skm.roc_auc_score(y, p))
    narrow = auc_ci(y, p, level=0.5)
    assert auc_ci(y, p)[1] < narrow[1] < narrow[2] < auc_ci(y, p)[2]


def test_auc_ci_covers_the_true_auc_about_95_percent_of_the_time():
    # Binormal scores: negatives N(0, 1), positives N(1, 1): true AUC = Phi(1/sqrt(2)).
    from scipy.stats import norm

    true_auc, rng, hits = norm.cdf(1 / np.sqrt(2)), np.random.default_rng(1), 0
    for _ in range(300):
        y = np.repeat([0, 1], 100)
        score = rng.normal(size=200) + y
        _, lo, hi = auc_ci(y, 1 / (1 + np.exp(-score)))
        hits += lo <= true_auc <= hi
    assert 0.91 <= hits / 300 <= 0.985


def test_auc_ci_refuses_bad_input():
    with pytest.raises(ValueError, match="level"):
        auc_ci(Y, P, level=95)
    with pytest.raises(ValueError, match="only class"):
        auc_ci([1, 1], [0.2, 0.3])


def _paired_delong_by_pairs(y, pa, pb):
    """The paired DeLong z-test from its definition: the 2×2 covariance of the placements."""
    from scipy.stats import norm

    def placements(p):
        pos, neg = p[y == 1], p[y == 0]
        kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return kernel.mean(axis=1), kernel.mean(axis=0)

    (a10, a01), (b10, b01) = placements(pa), placements(pb)
    s10, s01 = np.cov(np.vstack([a10, b10])), np.cov(np.vstack([a01, b01]))
    cov = s10 / len(a10) + s01 / len(a01)
    diff, se = a10.mean() - b10.mean(), np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    z = 1.959963984540054
    return diff, diff - z * se, diff + z * se, 2 * norm.sf(abs(diff) / se)


def test_auc_difference_matches_the_paired_definition_with_ties():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    shared = rng.normal(0, 0.25, 400)  # both models err on the same patches
    pa = np.round(np.clip(0.5 + 0.25 * (y - 0.5) + shared, 0, 1), 1)
    pb = np.round(np.clip(0.5 + 0.20 * (y - 0.5) + shared + rng.normal(0, 0.05, 400), 0, 1), 1)
    got = auc_difference_ci(y, pa, pb)
    assert got == pytest.approx(_paired_delong_by_pairs(y, pa, pb))
    assert got[0] == pytest.approx(skm.roc_auc_score(y, pa) - skm.roc_auc_score(y, pb))
    flipped = auc_difference_ci(y, pb, pa)
    assert flipped == pytest.approx((-got[0], -got[2], -got[1], got[3]))


def test_paired_test_separates_correlated_models_whose_own_intervals_overlap():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 500)
    score = rng.normal(size=1000) + 1.2 * y
    pa = 1 / (1 + np.exp(-score))
    pb = 1 / (1 + np.exp(-(score + rng.normal(0, 0.35, 1000))))  # a noisier copy of a
    (_, a_lo, a_hi), (_, b_lo, b_hi) = auc_ci(y, pa), auc_ci(y, pb)
    assert a_lo < b_hi and b_lo < a_hi  # the separate intervals overlap
    diff, lo, hi, p = auc_difference_ci(y, pa, pb)
    assert 0 < lo < diff < hi and p < 0.05


def test_auc_difference_of_a_model_with_itself_is_exactly_zero():
    assert auc_difference_ci(Y, P, P) == (0.0, 0.0, 0.0, 1.0)


def test_auc_difference_names_the_bad_input():
    with pytest.raises(ValueError, match="prob_b has 3$"):
        auc_difference_ci(Y, P, P[:3])
    with pytest.raises(ValueError, match="prob_a must hold probabilities"):
        auc_difference_ci(Y, P * 3, P)
    with pytest.raises(ValueError, match="two patches of each class"):
        auc_difference_ci([0, 1, 1], [0.1, 0.8, 0.9], [0.2, 0.7, 0.9])


def test_youden_threshold_maximises_j_and_prefers_the_highest():
    # J = 0.75 at 0.7 (sens 3/4, spec 1) and at 0.4 (sens 1, spec 3/4); 0.6 gives 0.5.
    assert youden_threshold(Y, P) == pytest.approx(0.7)
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.3)


def test_threshold_changes_only_thresholded_metrics():
    low, high = binary_metrics(Y, P, threshold=0.35), binary_metrics(Y, P, threshold=0.65)
    assert low["sensitivity"] == 1.0 and low["specificity"] == 0.75
    assert high["sensitivity"] == 0.75 and high["specificity"] == 1.0
    assert low["roc_auc"] == high["roc_auc"]


def test_threshold_is_inclusive():
    m = binary_metrics([0, 1], [0.2, 0.5], threshold=0.5)
    assert m["sensitivity"] == 1.0


@pytest.mark.parametrize(
    ("target", "thr", "sens", "spec"),
    [(0.75, 0.7, 0.75, 1.0), (1.0, 0.4, 1.0, 0.75), (0.5, 0.8, 0.5, 1.0)],
)
def test_operating_point_from_roc_curve(target, thr, sens, spec):
    m = binary_metrics(Y, P, operating_point=target)
    assert m["op_threshold"] == pytest.approx(thr)
    assert m["op_sensitivity"] == pytest.approx(sens)
    assert m["op_specificity"] == pytest.approx(spec)
    # The reported threshold really gives that sensitivity/specificity with the >= rule.
    at = binary_metrics(Y, P, threshold=m["op_threshold"])
    assert at["sensitivity"] == pytest.approx(sens) and at["specificity"] == pytest.approx(spec)


def test_operating_point_rejects_bad_target():
    with pytest.raises(ValueError, match="target sensitivity"):
        binary_metrics(Y, P, operating_point=1.5)


def test_ece_known_values():
    # All predictions 0.8 but only half are tumour: gap 0.3 in a single bin.
    assert expected_calibration_error([0, 1, 0, 1], [0.8] * 4) == pytest.approx(0.3)
    # Bins [0.1, 0.2) and [0.9, 1.0] each perfectly calibrated in aggregate.
    y = [0] * 9 + [1] + [1] * 9 + [0]
    p = [0.1] * 10 + [0.9] * 10
    assert expected_calibration_error(y, p) == pytest.approx(0.0)
    assert binary_metrics(y, p)["ece"] == pytest.approx(0.0)


def test_ece_matches_calibration_curve():
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p**2).astype(int)  # over-confident, so the ECE is far from 0
    rate, mean_p = calibration_curve(y, p, n_bins=10)
    counts = np.histogram(p, bins=10, range=(0, 1))[0]  # no p lies on an edge here
    expected = np.sum(counts[counts > 0] / len(p) * np.abs(rate - mean_p))
    assert expected > 0.05
    assert expected_calibration_error(y, p) == pytest.approx(expected)


def test_ece_bins_are_calibration_curves_right_closed_bins():
    # calibration_curve puts p = 0.1 in the first bin [0, 0.1], p = 0.15 in (0.1, 0.2].
    assert calibration_curve([1, 0], [0.1, 0.15], n_bins=10)[1].tolist() == [0.1, 0.15]
    assert expected_calibration_error([1, 0], [0.1, 0.15]) == pytest.approx((0.9 + 0.15) / 2)
    assert expected_calibration_error([0, 1], [0.0, 1.0], n_bins=1) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0, 1], [0.2, 0.8], n_bins=0)


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1, 1], [0.1, 0.2], "3 rows but y_prob has 2"),
        ([0, 1, 2, 1], [0.1] * 4, "bad labels: row 2: 2$"),
        ([1, 1, 1], [0.1, 0.5, 0.9], "only class 1"),
        ([0, 0], [0.1, 0.5], "only class 0"),
        ([0, 1, 0], [0.1, float("nan"), 0.3], "non-finite.*row 1"),
        ([0, 1, 0], [0.1, 0.4, 1.2], r"outside \[0, 1\].*row 2"),
        ([0, 1, 0], [0.1, 0.4, -0.2], r"outside \[0, 1\].*row 2"),
        ([], [], "empty"),
        (["a", "b"], [0.1, 0.2], "numeric"),
    ],
)
def test_binary_metrics_rejects_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        binary_metrics(y, p)


def test_accepts_column_vectors_and_bools():
    m = binary_metrics(Y.astype(bool)[:, None], P[:, None].astype(np.float32))
    assert m["roc_auc"] == pytest.approx(15 / 16)


# --------------------------------------------------------------------------- dihedral


def test_dihedral_views_are_the_eight_distinct_symmetries():
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    views = dihedral_views(x)
    assert len(views) == 8
    assert np.array_equal(views[0], x)
    assert np.array_equal(dihedral(x, 4), x[:, :, ::-1])
    assert np.array_equal(dihedral(x, 2), x[:, ::-1, ::-1])
    assert np.array_equal(dihedral(x, 1), np.rot90(x, 1, axes=(1, 2)))
    flat = {v.tobytes() for v in views}
    assert len(flat) == 8
    for v in views:
        assert v.dtype == np.uint8 and v.shape == x.shape and v.flags.c_contiguous
        assert np.array_equal(np.sort(v, axis=None), np.sort(x, axis=None))


def test_dihedral_rejects_bad_input():
    with pytest.raises(ValueError, match="0..7"):
        dihedral(np.zeros((1, 4, 4, 3)), 8)
    with pytest.raises(ValueError, match="4-D"):
        dihedral(np.zeros((4, 4, 3)), 0)
    with pytest.raises(ValueError, match="square"):
        dihedral(np.zeros((1, 4, 6, 3)), 1)


# --------------------------------------------------------------------------- predict_proba


def _tiny_cnn(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)  # position-dependent, so rotations change the output
    out = keras.layers.Dense(1, activation="sigmoid", bias_initializer="ones")(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def cnn():
    return _tiny_cnn()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (23, 12, 12, 3), dtype=np.uint8)


def test_predict_proba_shape_dtype_and_matches_model(cnn, images):
    p = predict_proba(cnn, images, batch_size=8, progress=False)
    assert p.shape == (23,) and p.dtype == np.float32
    ref = keras.ops.convert_to_numpy(cnn(images, training=False))[:, 0]
    np.testing.assert_allclose(p, ref, atol=1e-6)


@pytest.mark.parametrize("tta", [1, 8])
def test_predict_proba_independent_of_batch_size(cnn, images, tta):
    runs = [predict_proba(cnn, images, batch_size=b, tta=tta, progress=False) for b in (1, 5, 64)]
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], atol=1e-6)


def test_tta8_is_mean_over_dihedral_views(cnn, images):
    p8 = predict_proba(cnn, images, batch_size=10, tta=8, progress=False)
    views = [
        keras.ops.convert_to_numpy(cnn(v, training=False))[:, 0] for v in dihedral_views(images)
    ]
    np.testing.assert_allclose(p8, np.mean(views, axis=0), atol=1e-6)
    p1 = predict_proba(cnn, images, batch_size=10, tta=1, progress=False)
    assert not np.allclose(p8, p1, atol=1e-6)  # the model is not rotation invariant


class _SliceOnly:
    """Array-like that only supports len() and slicing, and records the slice sizes asked for."""

    def __init__(self, arr):
        self.arr, self.sizes = arr, []

    def __len__(self):
        return len(self.arr)

    def __getitem__(self, key):
        assert isinstance(key, slice), "predict_proba must index with slices"
        out = self.arr[key]
        self.sizes.append(len(out))
        return out

    def __array__(self, *args, **kwargs):
        raise AssertionError("predict_proba must not load the whole array")


def test_predict_proba_streams_batches(cnn, images, tmp_path):
    src = _SliceOnly(images)
    p = predict_proba(cnn, src, batch_size=7, progress=False)
    assert src.sizes == [7, 7, 7, 2]
    mm = np.lib.format.open_memmap(
        tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=images.shape
    )
    mm[:] = images
    mm.flush()
    ro = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_allclose(predict_proba(cnn, ro, batch_size=4, progress=False), p, atol=1e-6)


def test_predict_proba_progress_bar(cnn, images, capsys):
    predict_proba(cnn, images[:4], batch_size=2, progress=True)
    assert "2/2" in capsys.readouterr().err
    predict_proba(cnn, images[:4], batch_size=2, progress=False)
    assert capsys.readouterr().err == ""


class _FakeModel:
    def __init__(self, fn):
        self.fn = fn

    def predict_on_batch(self, x):
        return self.fn(x)


def test_predict_proba_rejects_bad_outputs(images):
    def nan_at_5(x):
        out = np.full((len(x), 1), 0.5, np.float32)
        if len(x) == 23:
            out[5] = np.nan
        return out

    with pytest.raises(ValueError, match="non-finite.*image 5"):
        predict_proba(_FakeModel(nan_at_5), images, batch_size=64, progress=False)
    with pytest.raises(ValueError, match="logits"):
        predict_proba(_FakeModel(lambda x: np.full((len(x), 1), 3.0)), images, progress=False)
    with pytest.raises(ValueError, match=r"shape \(10, 2\)"):
        predict_proba(_FakeModel(lambda x: np.zeros((len(x), 2))), images[:10], progress=False)
    with pytest.raises(ValueError, match="images 0..9 is a list"):
        predict_proba(_FakeModel(lambda x: [np.zeros((len(x), 1))]), images[:10], progress=False)
    with pytest.raises(ValueError, match="tta must be 1 or 8"):
        predict_proba(_FakeModel(lambda x: x), images, tta=4, progress=False)
    with pytest.raises(ValueError, match="NHWC|H, W, C"):
        predict_proba(_FakeModel(lambda x: x), images[:, :, :, 0].reshape(23, -1), progress=False)


def test_predict_proba_empty(cnn):
    out = predict_proba(cnn, np.zeros((0, 12, 12, 3), np.uint8), progress=False)
    assert out.shape == (0,) and out.dtype == np.float32
