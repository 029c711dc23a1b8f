"""Augmentation and stain tools on real patches: host numpy and model layers agree, layers are
uint8 in/out, the identity at inference, seeded and savable; HED and Reinhard do what they say."""

import keras
import numpy as np
import pytest

from pcamlib import augment
from pcamlib.augment import (
    HEDJitter,
    RandomColour,
    RandomDihedral,
    RandomShift,
    ReinhardNormalization,
    dihedral,
    host_augmentation,
    model_front,
    random_shift,
    with_input_layers,
)
from pcamlib.cache import load_patches
from pcamlib.config import SAMPLE_DIR, TrainConfig
from pcamlib.models import build_model


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    cache = load_patches(
        SAMPLE_DIR, "train", cache_dir=tmp_path_factory.mktemp("c"), progress=False
    )
    return np.asarray(cache.images[::8])  # 200 real Kaggle patches, both classes


def run(layer, x, training=True):
    return keras.ops.convert_to_numpy(layer(x, training=training))


RANDOM_LAYERS = [
    lambda seed: RandomDihedral(seed=seed),
    lambda seed: RandomShift(4, seed=seed),
    lambda seed: HEDJitter(0.1, seed=seed),
    lambda seed: RandomColour(0.1, seed=seed),
]


@pytest.mark.parametrize("make", RANDOM_LAYERS)
def test_layers_keep_uint8_shape_act_only_in_training_and_follow_their_seed(make, patches):
    x = patches[:64]
    layer = make(7)
    out = run(layer, x)
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert not np.array_equal(out, x)
    assert np.array_equal(run(layer, x, training=False), x)  # inference: identity
    assert np.array_equal(run(make(7), x), out)  # same seed, same draws
    assert not np.array_equal(run(make(8), x), out)
    assert not np.array_equal(run(layer, x), out)  # the generator moves on …
    fresh = make(0)
    fresh.seed_generator.state.assign(make(7).seed_generator.state)  # … and its state decides
    assert np.array_equal(run(fresh, x), out)


def test_dihedral_layer_gives_the_eight_views_of_each_patch(patches):
    x = patches[:64]
    out = run(RandomDihedral(seed=1), x)
    views = [dihedral(x, k) for k in range(8)]
    found = [[k for k in range(8) if np.array_equal(views[k][i], out[i])] for i in range(len(out))]
    assert all(found)
    assert {k[0] for k in found} == set(range(8))  # 64 patches: all views drawn
    assert [v.shape for v in augment.dihedral_views(x[:2])] == [x[:2].shape] * 8


def _shifted(image, dy, dx):
    """``image``'s content moved by (dy, dx) pixels (at most 3), the border mirrored in."""
    padded = np.pad(image, ((3, 3), (3, 3), (0, 0)), mode="reflect")
    return padded[3 - dy : 99 - dy, 3 - dx : 99 - dx]


def test_shifts_move_each_patch_by_at_most_shift_pixels_without_wrapping(patches):
    x = patches[:64]
    shifted = _shifted(x[0], 3, 0)
    assert np.array_equal(shifted[3:], x[0, :-3])  # content moved down by 3
    assert np.array_equal(shifted[:3], x[0, 3:0:-1])  # mirrored edge, …
    assert not np.array_equal(shifted[:3], np.roll(x[0], 3, axis=0)[:3])  # … not wrapped round
    offsets = np.random.default_rng(5).integers(-3, 4, (len(x), 2))
    host = random_shift(x, 3, np.random.default_rng(5))
    for got, image, (dy, dx) in zip(host, x, offsets, strict=True):
        assert np.array_equal(got, _shifted(image, dy, dx))
    out = run(RandomShift(3, seed=2), x)
    moves = set()
    for original, moved in zip(x, out, strict=True):
        candidates = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)]
        match = [d for d in candidates if np.array_equal(_shifted(original, *d), moved)]
        assert match, "every output is a reflect-padded shift of its own patch"
        moves.add(match[0])
    assert len(moves) > 10
    with pytest.raises(ValueError, match="do not fit"):
        random_shift(x[:1], 96, np.random.default_rng(0))


def _unmix_and_mix(x, alpha, beta):
    """HED jitter pixel by pixel: RGB to stain OD, each stain scaled and shifted, back to RGB."""
    hed = -np.log((x.reshape(len(x), -1, 3) + 1.0) / augment.I0) @ augment.HED_FROM_RGB
    od = (hed * alpha[:, None] + beta[:, None]) @ augment.RGB_FROM_HED
    return np.clip(np.round(augment.I0 * np.exp(-od) - 1), 0, 255).reshape(x.shape)


def _assert_close(got, expected):
    assert np.abs(got.astype(int) - expected).max() <= 1  # float32 rounding only
    assert (np.abs(got.astype(int) - expected) > 0).mean() < 0.01


def test_hed_jitter_on_host_and_in_the_model_is_the_stain_unmix_and_remix(patches):
    rng = np.random.default_rng(0)  # hed_jitter's own draws: alpha, then beta
    alpha, beta = (
        rng.uniform(0.9, 1.1, (len(patches), 3)),
        rng.uniform(-0.1, 0.1, (len(patches), 3)),
    )
    host = augment.hed_jitter(patches, 0.1, np.random.default_rng(0))
    _assert_close(host, _unmix_and_mix(patches, alpha, beta))
    shape = (len(patches), 2, 3)
    factors = keras.random.uniform(shape, -0.1, 0.1, seed=keras.random.SeedGenerator(5))
    factors = keras.ops.convert_to_numpy(factors)  # the layer's own draws: alpha - 1, beta
    got = run(HEDJitter(0.1, seed=5), patches)
    _assert_close(got, _unmix_and_mix(patches, 1.0 + factors[:, 0], factors[:, 1]))


def test_no_hed_jitter_gives_the_patch_back_and_the_matrix_is_ruifrok_johnston(patches):
    same = augment.hed_jitter(patches, 0.0, np.random.default_rng(0))
    assert np.abs(same.astype(int) - patches).max() <= 1
    assert augment.RGB_FROM_HED[0].tolist() == [0.65, 0.70, 0.29]  # haematoxylin
    np.testing.assert_allclose(augment.HED_FROM_RGB @ augment.RGB_FROM_HED, np.eye(3), atol=1e-12)
    # H&E tissue: haematoxylin and eosin dominate DAB (no DAB in H&E) on average.
    hed = -np.log((patches.reshape(-1, 3) + 1.0) / augment.I0) @ augment.HED_FROM_RGB
    h, e, d = hed.mean(axis=0)
    assert h > abs(d) and e > abs(d)


@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_hed_jitter_keeps_uint8_shape_is_seeded_and_grows_with_sigma(patches, sigma):
    out = augment.hed_jitter(patches, sigma, np.random.default_rng(3))
    assert out.dtype == np.uint8 and out.shape == patches.shape
    assert np.array_equal(out, augment.hed_jitter(patches, sigma, np.random.default_rng(3)))
    assert not np.array_equal(out, augment.hed_jitter(patches, sigma, np.random.default_rng(4)))
    change = np.abs(out.astype(int) - patches).mean()
    assert 0.5 * 40 * sigma < change < 2 * 80 * sigma  # ~3.7 levels at σ 0.05, ~7.3 at 0.1
    layer = run(HEDJitter(sigma, seed=3), patches)
    assert 0.5 < np.abs(layer.astype(int) - patches).mean() / change < 2  # the same σ scale


def test_colour_jitter_has_the_documented_strength_on_host_and_in_the_model(patches):
    host = augment.jitter_colour(patches, 0.1, np.random.default_rng(0)).astype(float)
    model = run(RandomColour(0.1, seed=3), patches).astype(float)
    for out in (host, model):
        change = np.abs(out - patches).mean(axis=(1, 2, 3))
        assert (change > 0).all() and (change < 0.25 * 255).all()
    ratio = np.abs(model - patches).mean() / np.abs(host - patches).mean()
    assert 0.5 < ratio < 2  # color_jitter means the same on either placement


def test_reinhard_moves_every_patch_to_the_target_on_host_and_in_the_model(patches):
    target = augment.reinhard_target(patches)
    out = augment.reinhard_normalise(patches, *target)
    assert out.dtype == np.uint8 and out.shape == patches.shape
    lab = augment.rgb_to_lab(out).reshape(len(out), -1, 3)
    tissue = patches.reshape(len(patches), -1).std(axis=1) > 20  # skip near-blank patches
    assert np.abs(np.median(lab[tissue].mean(axis=1), axis=0) - target[0]).max() < 0.05
    before = augment.rgb_to_lab(patches).reshape(len(patches), -1, 3)[tissue].mean(axis=1)
    assert lab[tissue].mean(axis=1)[:, 0].std() < 0.5 * before[:, 0].std()  # less spread
    layer = run(ReinhardNormalization(*target), patches, training=False)  # on at inference
    assert layer.dtype == np.uint8 and np.abs(layer.astype(int) - out).max() <= 1


def test_front_layers_make_a_flat_training_model_whose_inference_is_unchanged(patches, tmp_path):
    x = patches[:64]
    config = TrainConfig(
        model="pcamnet", augment=True, shift=4, color_jitter=0.1, hed_jitter=0.1,
        augment_on="model", stain_norm="reinhard",
    )  # fmt: skip
    keras.utils.set_random_seed(0)
    base = build_model("pcamnet", image_size=64, widths=(8, 16))
    plain = base.predict(x, verbose=0)
    model = with_input_layers(base, model_front(config, x, np.arange(len(x))))
    names = [layer.name for layer in model.layers]
    assert names[:7] == [
        "patch", "stain_norm", "aug_dihedral", "aug_shift", "aug_hed", "aug_colour", "centre_crop"
    ]  # fmt: skip
    assert model.count_params() == base.count_params()
    assert model.get_layer("s1_conv1") is base.get_layer("s1_conv1")  # same layers, flat
    generators = [g for layer in model._flatten_layers() for g in layer._seed_generators]
    assert len(generators) == 5  # 4 augmentations + Dropout

    no_norm = with_input_layers(base, model_front(config.replace(stain_norm=None), x, range(64)))
    np.testing.assert_allclose(no_norm.predict(x, verbose=0), plain, atol=1e-6)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert loaded.get_layer("stain_norm").means == model.get_layer("stain_norm").means
    assert loaded.get_layer("aug_shift").get_config()["shift"] == 4
    assert (
        loaded.get_layer("aug_hed").strength == 0.1
        and loaded.get_layer("aug_hed").seed == config.seed + 2
    )


def test_placement_settings_split_the_work_between_host_and_model():
    config = TrainConfig(augment=True, shift=4, color_jitter=0.1, hed_jitter=0.05)
    assert host_augmentation(config) == dict(
        augment=True, shift=4, color_jitter=0.1, hed_jitter=0.05
    )
    assert model_front(config) == []
    on_model = config.replace(augment_on="model")
    assert host_augmentation(on_model) == {}
    assert [type(x).__name__ for x in model_front(on_model)] == [
        "RandomDihedral", "RandomShift", "HEDJitter", "RandomColour"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="augment_on"):
        host_augmentation(config.replace(augment_on="gpu"))
    with pytest.raises(ValueError, match="stain_norm"):
        model_front(config.replace(stain_norm="macenko"))
    with pytest.raises(ValueError, match="training images"):
        model_front(config.replace(stain_norm="reinhard"))
