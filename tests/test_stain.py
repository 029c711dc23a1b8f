"""Stain tools on real patches: exact HED round trip, bounded jitter, Reinhard, the figure."""

import matplotlib
import numpy as np
import pytest

from pcamlib import stain
from pcamlib.cache import load_patches
from pcamlib.config import SAMPLE_DIR

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    cache = load_patches(
        SAMPLE_DIR, "train", cache_dir=tmp_path_factory.mktemp("c"), progress=False
    )
    return np.asarray(cache.images[::8])  # 200 real Kaggle patches


def test_hed_round_trip_is_exact_on_real_patches(patches):
    hed = stain.rgb_to_hed(patches)
    assert hed.shape == patches.shape and hed.dtype == np.float32
    back = stain.hed_to_rgb(hed)
    assert back.dtype == np.uint8 and np.array_equal(back, patches)
    ones, zeros = np.ones((len(patches), 3)), np.zeros((len(patches), 3))
    assert np.abs(stain.apply_hed(patches, ones, zeros).astype(int) - patches).max() <= 1
    # H&E tissue: haematoxylin and eosin dominate DAB (no DAB in H&E) on average.
    h, e, d = hed.reshape(-1, 3).mean(axis=0)
    assert h > abs(d) and e > abs(d)


def test_hed_matrix_is_ruifrok_johnston_as_in_scikit_image():
    assert stain.RGB_FROM_HED[0].tolist() == [0.65, 0.70, 0.29]  # haematoxylin
    np.testing.assert_allclose(stain.HED_FROM_RGB @ stain.RGB_FROM_HED, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_hed_jitter_keeps_uint8_shape_is_seeded_and_grows_with_sigma(patches, sigma):
    out = stain.hed_jitter(patches, sigma, np.random.default_rng(3))
    assert out.dtype == np.uint8 and out.shape == patches.shape
    assert np.array_equal(out, stain.hed_jitter(patches, sigma, np.random.default_rng(3)))
    assert not np.array_equal(out, stain.hed_jitter(patches, sigma, np.random.default_rng(4)))
    change = np.abs(out.astype(int) - patches).mean()
    assert 0.5 * 40 * sigma < change < 2 * 80 * sigma  # ~3.7 levels at σ 0.05, ~7.3 at 0.1


def test_reinhard_moves_every_patch_to_the_target_statistics(patches):
    target = stain.reinhard_target(patches)
    out = stain.reinhard_normalise(patches, *target)
    assert out.dtype == np.uint8 and out.shape == patches.shape
    lab = stain.rgb_to_lab(out).reshape(len(out), -1, 3)
    tissue = patches.reshape(len(patches), -1).std(axis=1) > 20
    assert np.abs(np.median(lab[tissue].mean(axis=1), axis=0) - target[0]).max() < 0.05
    before = stain.rgb_to_lab(patches).reshape(len(patches), -1, 3)[tissue].mean(axis=1)
    assert lab[tissue].mean(axis=1)[:, 0].std() < 0.5 * before[:, 0].std()  # less spread
    np.testing.assert_allclose(
        stain.rgb_to_lab(stain.lab_to_rgb(stain.rgb_to_lab(patches))),
        stain.rgb_to_lab(patches),
        atol=0.01,
    )


def test_stain_figure_shows_jitters_normalised_patch_and_each_source(patches):
    from pcamlib.plots import plot_stain_tools

    fig = plot_stain_tools(patches[0], {"Kaggle sample": patches[:6], "other": patches[6:12]})
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 1 + 4 + 1 + 6 + 6
    titles = [ax.get_title(loc="left") for ax in shown]
    assert titles[:6] == ["original", *[f"HED σ=0.1 #{i}" for i in (1, 2, 3, 4)],
                          "Reinhard-normalised"]  # fmt: skip
    assert "Kaggle sample" in titles and "other" in titles
    assert not np.array_equal(shown[1].images[0].get_array(), patches[0])
    with pytest.raises(ValueError, match="uint8"):
        plot_stain_tools(patches[0].astype(float), {"x": patches})
    with pytest.raises(ValueError, match="source"):
        plot_stain_tools(patches[0], {})
