"""The reference architectures, exactly: parameter counts, I/O contract, save/load."""

import os
import subprocess
import sys

import numpy as np
import pytest

from pcamlib.models import MODEL_NAMES, ConvBlock, TopBlock, build_model

REFERENCE_PARAMS = {
    "cnn1": 1_401_617,  # the reference printed 1,401,873: see CNNModel1's docstring
    "cnn2": 2_799_073,
    "vgg16": 14_807_041,
    "vgg19": 20_116_737,
    "resnet50": 23_956_545,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_counts_match_reference(name):
    assert build_model(name).count_params() == REFERENCE_PARAMS[name]


def test_cnn1_difference_to_printed_reference_is_batchnorm_in_block2():
    from pcamlib.models import _reference_cnn

    blocks = [ConvBlock(16, name="b1"), ConvBlock(32, batch_norm=True, name="b2")]
    assert _reference_cnn(64, blocks, TopBlock(256), "printed").count_params() == 1_401_873


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_take_uint8_patches_and_return_probabilities(name):
    model = build_model(name)
    assert model.inputs[0].dtype == "uint8" and model.inputs[0].name == "patch"
    assert model.layers[-1].name == "tumor_prob"
    assert model.get_layer("tumor_logit").output.shape == (None, 1)
    rng = np.random.default_rng(0)
    probs = np.asarray(model.predict(rng.integers(0, 256, (3, 96, 96, 3), np.uint8), verbose=0))
    assert probs.shape == (3, 1) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))


def test_pcamnet_stem_sees_the_whole_patch_at_half_resolution():
    from pcamlib.config import RECIPES

    recipe = RECIPES["pcam-cpu"]
    model = build_model("pcamnet", image_size=recipe["image_size"], **recipe["model_kwargs"])
    assert recipe["image_size"] == 96 and "centre_crop" not in [x.name for x in model.layers]
    assert model.get_layer("stem_conv").output.shape == (None, 48, 48, 24)
    assert model.get_layer("s1_conv1").output.shape == (None, 48, 48, 24)
    assert model.count_params() == 667_369  # the pcam-cpu model (pcamlib/config.py RECIPES)


def test_frozen_backbone_trains_only_the_head():
    model = build_model("vgg16", weights=None, trainable=False)
    feature_map = model.get_layer("block5_conv3")  # the backbone's layers are the model's own
    assert not feature_map.trainable and model.get_layer("head_dense16").trainable
    head = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert head == 73_744 + 136 + 9 + 2 * 8 + 2 * 4608  # dense16, dense8, out, BN γ/β


def test_backbone_options_are_validated():
    with pytest.raises(ValueError, match="weights"):
        build_model("vgg16", weights="random")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("alexnet")
    with pytest.raises(ValueError, match="no pretrained"):
        build_model("cnn1", weights="imagenet")


def test_keras_round_trip_preserves_predictions(tmp_path):
    import keras

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (4, 96, 96, 3), np.uint8)
    for name in ("cnn2", "resnet50"):
        model = build_model(name)
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        np.testing.assert_allclose(
            loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
        )


def test_caffe_preprocess_matches_keras_applications():
    import keras

    from pcamlib.models import CaffePreprocess

    x = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(CaffePreprocess()(x))
    theirs = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_every_model_builds_and_trains_under_jax():
    code = (
        "import numpy as np, keras; from pcamlib.models import build_model;"
        "from pcamlib.train import compile_model;"
        "assert keras.backend.backend() == 'jax';"
        "x = np.random.default_rng(0).integers(0, 256, (8, 96, 96, 3), np.uint8);"
        "y = np.array([0, 1] * 4, 'float32');"
        "[compile_model(build_model(n), keras.optimizers.Adam(1e-3)).fit(x, y, epochs=1, verbose=0)"
        " for n in ('cnn1', 'cnn2', 'pcamnet', 'vgg16')];"
        "print('ok', build_model('resnet50').count_params())"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok 23956545" in out.stdout
