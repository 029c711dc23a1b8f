"""The stain figure on real patches: HED jitters, the Reinhard-normalised patch, each source."""

import matplotlib
import numpy as np
import pytest

from pcamlib.cache import load_patches
from pcamlib.config import SAMPLE_DIR

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    cache = load_patches(
        SAMPLE_DIR, "train", cache_dir=tmp_path_factory.mktemp("c"), progress=False
    )
    return np.asarray(cache.images[::8])  # 200 real Kaggle patches


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
