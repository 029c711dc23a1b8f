"""Tests for pcamlib.gradcam: layer choice, nested backbones, localisation and saturation."""

import matplotlib

matplotlib.use("Agg")

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pcamlib.gradcam import find_target_layer, gradcam  # noqa: E402
from pcamlib.models import build_model  # noqa: E402
from pcamlib.plots import plot_gradcam  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
SQUARE = (slice(8, 24), slice(64, 88))  # rows, cols: top-right, so a transpose or flip shows


def _check(heat, n=3):
    assert heat.shape == (n, 96, 96) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0


def _red_detector(weight: float = 5.0) -> keras.Model:
    """Score = weight * mean red intensity; its 4x4-stride conv maps are red (ch 0) and green."""
    inp = keras.Input((96, 96, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inp)
    conv = keras.layers.Conv2D(2, 4, strides=4, use_bias=False, activation="relu", name="conv")
    x = conv(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(1, activation="sigmoid", name="score")
    out = dense(x)
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
    _check(gradcam(model, IMAGES, batch_size=2))
    first = model.layers[2].name
    _check(gradcam(model, IMAGES, layer_name=first))
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        gradcam(model, IMAGES, layer_name="nope")
    with pytest.raises(ValueError, match="4-D"):
        gradcam(model, IMAGES, layer_name=model.layers[-1].name)


def test_batching_does_not_change_maps():
    model = _tiny_cnn()
    a = gradcam(model, IMAGES, batch_size=1)
    b = gradcam(model, IMAGES, batch_size=3)
    np.testing.assert_allclose(a, b, atol=1e-5)


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


def test_logit_layer_or_final_sigmoid_activation_is_explained_not_the_probability():
    red = _red_detector(weight=5000.0)  # saturated: p == 1.0, d p / d map == 0
    inp = keras.Input((96, 96, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(2, 4, strides=4, use_bias=False, activation="relu", name="conv")(x)
    x = keras.layers.Dense(1, name="tumor_logit")(keras.layers.GlobalAveragePooling2D()(x))
    named = keras.Model(inp, keras.layers.Activation("sigmoid", name="tumor_prob")(x))
    named.set_weights(red.get_weights())
    heat = gradcam(named, _red_square(1))
    np.testing.assert_allclose(heat, gradcam(red, _red_square(1)), atol=1e-6)
    assert heat[(0, *SQUARE)].mean() > 0.85


def test_nested_backbone_is_refused_with_the_fix():
    keras.utils.set_random_seed(5)
    b_in = keras.Input((96, 96, 3))
    backbone = keras.Model(
        b_in, keras.layers.MaxPooling2D()(keras.layers.Conv2D(4, 3, name="bconv")(b_in)), name="bb"
    )
    model = keras.Sequential(
        [
            keras.Input((96, 96, 3), dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            backbone,
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    with pytest.raises(ValueError, match="nested model 'bb'.*input_tensor=x"):
        gradcam(model, IMAGES)
    with pytest.raises(ValueError, match="no layer named 'bconv'.*input_tensor=x"):
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
from pcamlib.gradcam import gradcam
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
