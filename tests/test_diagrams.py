import os
import warnings

import keras
import pytest
from PIL import Image

from pcamlib.diagrams import draw_model

L = keras.layers


def _cnn():
    return keras.Sequential(
        [
            keras.Input((96, 96, 3)),
            L.Rescaling(1 / 255),
            L.Resizing(64, 64),
            L.Conv2D(16, 3),
            L.BatchNormalization(),
            L.Activation("relu"),
            L.MaxPooling2D(),
            L.Conv2D(32, 3, activation="relu"),
            L.GlobalAveragePooling2D(),
            L.Dropout(0.3),
            L.Dense(32, activation="relu"),
            L.Dense(1, activation="sigmoid"),
        ]
    )


def _wrapped(app):
    base = app(weights=None, include_top=False, input_shape=(96, 96, 3))
    inputs = keras.Input((96, 96, 3))
    x = L.Flatten()(base(inputs))
    return keras.Model(inputs, L.Dense(1, activation="sigmoid")(x))


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(1)

    def call(self, x):
        return self.dense(x)


@pytest.fixture(scope="module", params=["cnn", "vgg16", "resnet50"])
def model(request):
    build = {
        "cnn": _cnn,
        "vgg16": lambda: _wrapped(keras.applications.VGG16),
        "resnet50": lambda: _wrapped(keras.applications.ResNet50),
    }
    return build[request.param]()


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _assert_real_image(img):
    assert isinstance(img, Image.Image)
    assert img.width > 100 and img.height > 100
    lo, hi = img.convert("L").getextrema()
    assert lo < hi  # not a blank canvas


@pytest.mark.parametrize("expand_nested", [False, True])
def test_renders_without_mutating_model(model, expand_nested):
    def snapshot():  # nested Functional models have a native output_shape
        return {id(la): (set(vars(la)), hasattr(la, "output_shape")) for la in _all_layers(model)}

    before = snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a successful render should be quiet
        img = draw_model(model, expand_nested=expand_nested)
    _assert_real_image(img)
    assert snapshot() == before


def test_expand_nested_draws_backbone_layers():
    m = _wrapped(keras.applications.VGG16)
    assert draw_model(m, expand_nested=True).width > draw_model(m).width


def test_writes_file_atomically(tmp_path):
    path = tmp_path / "cnn.png"
    img = draw_model(_cnn(), path)
    _assert_real_image(img)
    with Image.open(path) as saved:
        assert saved.size == img.size
    assert os.listdir(tmp_path) == ["cnn.png"]  # no temp file left behind


def test_jpeg_path_drops_alpha(tmp_path):
    path = tmp_path / "cnn.jpg"
    assert draw_model(_cnn(), str(path), legend=False) is not None
    with Image.open(path) as saved:
        assert saved.format == "JPEG"


def test_subclassed_model_warns_and_returns_none():
    m = _Subclassed()
    m(keras.ops.ones((2, 4)))
    with pytest.warns(UserWarning, match="not a functional graph"):
        assert draw_model(m) is None


def test_write_failure_warns_and_returns_none(tmp_path):
    with pytest.warns(UserWarning, match="could not draw"):
        assert draw_model(_cnn(), tmp_path / "missing" / "x.png") is None


def test_bad_kwargs_warn_instead_of_raising():
    with pytest.warns(UserWarning, match="could not draw"):
        assert draw_model(_cnn(), not_an_option=1) is None


def test_long_models_are_drawn_one_box_per_stage(monkeypatch):
    from pcamlib import diagrams
    from pcamlib.models import build_model

    model = build_model("resnet50", weights=None)  # 175 backbone layers in the model itself
    staged = draw_model(model)
    _assert_real_image(staged)
    monkeypatch.setattr(diagrams, "MAX_BOXES", 10_000)
    assert draw_model(model).width > 10 * staged.width
