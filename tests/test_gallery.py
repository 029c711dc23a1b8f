"""pcamlib.gallery: patch grids, confident errors, Grad-CAM maps (layer, logit, crop, JAX)."""

import matplotlib

matplotlib.use("Agg")

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from pcamlib import gallery  # noqa: E402
from pcamlib.gallery import find_target_layer, gradcam, plot_gradcam  # noqa: E402
from pcamlib.models import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
SQUARE = (slice(8, 24), slice(64, 88))  # rows, cols: top-right, so a transpose or flip shows
N = 60
Y = np.array([0, 1] * (N // 2))
P = np.clip(Y * 0.6 + RNG.random(N) * 0.4, 0, 1)
PATCHES = RNG.integers(0, 256, (N, 96, 96, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig):
    return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def _save(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=40)
    assert path.stat().st_size > 1000


def _check(heat, n=3):
    assert heat.shape == (n, 96, 96) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0


def _red_detector(weight: float = 5.0) -> keras.Model:
    """Logit = weight * mean red intensity; its 4x4-stride conv maps are red (ch 0) and green."""
    inp = keras.Input((96, 96, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inp)
    conv = keras.layers.Conv2D(2, 4, strides=4, use_bias=False, activation="relu", name="conv")
    x = conv(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(1, name="tumor_logit")
    out = keras.layers.Activation("sigmoid", name="tumor_prob")(dense(x))
    kernel = np.zeros((4, 4, 3, 2), np.float32)
    kernel[:, :, 0, 0] = kernel[:, :, 1, 1] = 1 / 16
    conv.set_weights([kernel])
    dense.set_weights([np.array([[weight], [0.0]], np.float32), np.array([-1.0], np.float32)])
    return keras.Model(inp, out)


def _red_square(n: int = 2) -> np.ndarray:
    imgs = np.zeros((n, 96, 96, 3), np.uint8)
    imgs[..., 1] = 200  # green everywhere, ignored by the score
    imgs[(slice(None), *SQUARE, 0)] = 255
    return imgs


def _tiny_cnn() -> keras.Model:
    keras.utils.set_random_seed(1)
    inp = keras.Input((96, 96, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="last_conv")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inp, out)


def test_heatmap_localises_the_evidence(tmp_path):
    model = _red_detector()
    assert find_target_layer(model) == "conv"
    heat = gradcam(model, _red_square())
    _check(heat, 2)
    inside = heat[(slice(None), *SQUARE)]
    outside = heat.copy()
    outside[:, 4:28, 60:92] = np.nan  # square plus the bilinear blur margin
    assert inside.mean() > 0.85 and inside.min() > 0.3
    assert np.nanmax(outside) < 0.05
    fig = plot_gradcam(_red_square(), heat, probs=[0.9, 0.9], labels=[1, 1])
    fig.savefig(tmp_path / "red.png", dpi=40)


def test_saturated_sigmoid_still_gives_a_map():
    model = _red_detector(weight=5000.0)
    p = keras.ops.convert_to_numpy(model(_red_square(1)))
    assert p[0, 0] == 1.0  # gradient of the probability itself would be exactly zero
    heat = gradcam(model, _red_square(1))
    assert heat.max() == 1.0 and heat[(0, *SQUARE)].mean() > 0.85


def test_tiny_cnn_default_and_named_layers():
    model = _tiny_cnn()
    assert find_target_layer(model) == "last_conv"  # trailing MaxPooling is skipped
    _check(gradcam(model, IMAGES))
    first = model.layers[2].name
    _check(gradcam(model, IMAGES, layer_name=first))
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        gradcam(model, IMAGES, layer_name="nope")
    with pytest.raises(ValueError, match="4-D"):
        gradcam(model, IMAGES, layer_name=model.layers[-1].name)


def test_batching_does_not_change_maps(monkeypatch):
    model = _tiny_cnn()
    monkeypatch.setattr(gallery, "BATCH", 1)
    a = gradcam(model, IMAGES)
    monkeypatch.setattr(gallery, "BATCH", 2)
    np.testing.assert_allclose(a, gradcam(model, IMAGES), atol=1e-5)


def test_sequential_model():
    model = keras.Sequential(
        [
            keras.Input((96, 96, 3), dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(3, 5, strides=4, name="c"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
            keras.layers.Activation("sigmoid"),
        ]
    )
    assert find_target_layer(model) == "c"
    _check(gradcam(model, IMAGES))


def test_nested_models_are_not_searched_and_unknown_layers_are_named():
    b_in = keras.Input((96, 96, 3))
    backbone = keras.Model(b_in, keras.layers.Conv2D(4, 3, name="bconv")(b_in), name="bb")
    model = keras.Sequential(
        [
            keras.Input((96, 96, 3), dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            backbone,
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    with pytest.raises(ValueError, match="no convolutional layer"):
        gradcam(model, IMAGES)
    with pytest.raises(ValueError, match="no layer named 'bconv'"):
        gradcam(model, IMAGES, layer_name="bconv")


def test_vgg16_backbone_layers_are_reachable():
    keras.utils.set_random_seed(3)
    model = build_model("vgg16", weights=None, trainable=False)
    assert find_target_layer(model) == "block5_conv3"  # block5_pool is skipped
    _check(gradcam(model, IMAGES))
    _check(gradcam(model, IMAGES[:1], layer_name="block4_conv3"), 1)


def test_resnet50_default_layer_and_a_layer_inside_a_residual_block():
    keras.utils.set_random_seed(4)
    model = build_model("resnet50", weights=None, image_size=64)
    assert find_target_layer(model) == "conv5_block3_out"
    _check(gradcam(model, IMAGES[:2]), 2)
    with pytest.raises(ValueError, match="not on every path"):
        gradcam(model, IMAGES[:1], layer_name="conv5_block3_2_conv")


def test_rejects_models_without_conv_layers():
    inp = keras.Input((96, 96, 3), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp))
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x))
    with pytest.raises(ValueError, match="no convolutional layer"):
        gradcam(model, IMAGES)


JAX_SCRIPT = """
import numpy as np, keras
assert keras.backend.backend() == "jax"
from pcamlib.gallery import gradcam
from pcamlib.metrics import predict_proba
inp = keras.Input((96, 96, 3), dtype="uint8")
conv = keras.layers.Conv2D(2, 4, strides=4, use_bias=False, activation="relu")
dense = keras.layers.Dense(1, activation="sigmoid")
model = keras.Model(inp, dense(keras.layers.GlobalAveragePooling2D()(conv(inp))))
kernel = np.zeros((4, 4, 3, 2), np.float32)
kernel[:, :, 0, 0] = kernel[:, :, 1, 1] = 1 / (16 * 255)
conv.set_weights([kernel])
dense.set_weights([np.array([[5.0], [0.0]], np.float32), np.array([-1.0], np.float32)])
imgs = np.zeros((2, 96, 96, 3), np.uint8)
imgs[:, 8:24, 64:88, 0] = 255
heat = gradcam(model, imgs)
assert heat.shape == (2, 96, 96) and heat[:, 8:24, 64:88].mean() > 0.85, heat.max()
assert heat[:, 40:, :40].max() == 0.0
from pcamlib.models import PCamNet
heat = gradcam(PCamNet(crop=64, widths=(4, 8)), imgs)  # tumor_logit, centre crop
assert heat.shape == (2, 96, 96) and heat[:, 16:80, 16:80].max() > 0 and heat[:, :16].max() == 0
p = predict_proba(model, imgs, batch_size=1, tta=8, progress=False)
assert p.shape == (2,) and np.isfinite(p).all()
print("jax-ok")
"""


def test_jax_backend_in_subprocess():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    res = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0 and "jax-ok" in res.stdout, res.stderr[-3000:]


def test_centre_cropping_model_gets_its_map_inside_the_crop_window():
    from pcamlib.models import PCamNet

    model = PCamNet(crop=64, widths=(4, 8))
    x = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), np.uint8)
    heat = gradcam(model, x)
    assert heat.shape == (2, 96, 96) and np.isfinite(heat).all()
    outside = np.ones((96, 96), bool)
    outside[16:80, 16:80] = False
    assert (heat[:, outside] == 0).all()  # the network never saw those pixels
    assert heat[:, 16:80, 16:80].max() > 0


# --------------------------------------------------------------------------- pictures


def test_plot_patch_grid_boxes_and_captions(tmp_path):
    fig = gallery.plot_patch_grid(PATCHES, labels=Y, probs=P, n=12, title="grid")
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 12 and len(fig.axes) == 20  # rows of 10
    boxes = [p for p in image_axes[0].patches if isinstance(p, Rectangle)]
    assert len(boxes) == 1
    # Pixels 32..63 of a 96 px patch; imshow pixel i spans [i - 0.5, i + 0.5].
    assert boxes[0].get_xy() == (31.5, 31.5)
    assert boxes[0].get_width() == 32 and boxes[0].get_height() == 32
    title = image_axes[1].get_title()
    assert title == f"y=1 p={P[1]:.2f}"
    correct = (P[1] >= 0.5) == Y[1]
    assert matplotlib.colors.to_hex(image_axes[1].title.get_color()) == (
        "#008000" if correct else "#ff0000"
    )
    _save(fig, tmp_path, "grid")
    with pytest.raises(ValueError, match="labels has 3 rows"):
        gallery.plot_patch_grid(PATCHES, labels=[0, 1, 0])


def test_plot_confident_errors_picks_most_confident(tmp_path):
    y = np.array([0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.9, 0.6, 0.1, 0.05, 0.3, 0.9, 0.99])
    fig = gallery.plot_confident_errors(PATCHES[:7], y, p, n=2)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    # FPs by descending p: #6 (0.99), #0 (0.9); FNs by ascending p: #3 (0.05), #4 (0.3).
    assert titles == ["#6 p=0.990", "#0 p=0.900", "#3 p=0.050", "#4 p=0.300"]
    assert "showing 2 of 3" in _texts(fig) and "showing 2 of 2" in _texts(fig)
    _save(fig, tmp_path, "errors")
    none = gallery.plot_confident_errors(PATCHES[:2], [0, 1], [0.1, 0.9], n=4)
    assert "none" in _texts(none)


def test_plot_confident_errors_counts_errors_at_the_given_threshold():
    y = np.array([0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.9, 0.6, 0.1, 0.05, 0.3, 0.9, 0.99])
    fig = gallery.plot_confident_errors(PATCHES[:7], y, p, n=3, threshold=0.95)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    # At 0.95 only #6 (0.99) is a false positive; every tumour patch (#3, #4, #5) is missed.
    assert titles == ["#6 p=0.990", "#3 p=0.050", "#4 p=0.300", "#5 p=0.900"]
    assert "p ≥ 0.95" in _texts(fig) and "showing 1 of 1" in _texts(fig)


def test_plot_gradcam_overlay(tmp_path):
    heat = np.zeros((3, 96, 96), np.float32)
    heat[:, 40:60, 40:60] = 1.0
    fig = gallery.plot_gradcam(PATCHES[:3], heat, probs=[0.1, 0.5, 0.9], labels=[0, 1, 1])
    overlay = [ax for ax in fig.axes if len(ax.images) == 2]
    assert len(overlay) == 3 and overlay[0].images[1].get_alpha() == 0.4
    assert all(any(isinstance(p, Rectangle) for p in ax.patches) for ax in overlay)
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "colorbar"]  # one scale for all
    assert bar.get_ylim() == (0.0, 1.0)
    _save(fig, tmp_path, "gradcam")
    with pytest.raises(ValueError, match="do not match"):
        gallery.plot_gradcam(PATCHES[:3], heat[:, :50])
