"""In-model augmentation: real patches in, uint8 out, identity at inference, seeded, savable."""

import keras
import numpy as np
import pytest

from pcamlib import stain
from pcamlib.augment import dihedral, shift_images
from pcamlib.augment_layers import (
    HEDJitter,
    RandomColour,
    RandomDihedral,
    RandomShift,
    ReinhardNormalization,
    apply_hed,
    host_augmentation,
    model_front,
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
    return np.asarray(cache.images[::25])  # 64 real patches, both classes


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
    layer = make(7)
    out = run(layer, patches)
    assert out.dtype == np.uint8 and out.shape == patches.shape
    assert not np.array_equal(out, patches)
    assert np.array_equal(run(layer, patches, training=False), patches)  # inference: identity
    assert np.array_equal(run(make(7), patches), out)  # same seed, same draws
    assert not np.array_equal(run(make(8), patches), out)
    assert not np.array_equal(run(layer, patches), out)  # the generator moves on …
    fresh = make(0)
    fresh.seed_generator.state.assign(make(7).seed_generator.state)  # … and its state decides
    assert np.array_equal(run(fresh, patches), out)


def test_dihedral_layer_gives_the_eight_views_of_each_patch(patches):
    out = run(RandomDihedral(seed=1), patches)
    views = [dihedral(patches, k) for k in range(8)]
    found = [[k for k in range(8) if np.array_equal(views[k][i], out[i])] for i in range(len(out))]
    assert all(found)
    assert {k[0] for k in found} == set(range(8))  # 64 patches: all views drawn


def test_shift_layer_moves_each_patch_by_at_most_shift_pixels_without_wrapping(patches):
    out = run(RandomShift(3, seed=2), patches)
    moves = set()
    for original, moved in zip(patches, out, strict=True):
        match = [
            (dy, dx)
            for dy in range(-3, 4)
            for dx in range(-3, 4)
            if np.array_equal(shift_images(original[None], [(dy, dx)])[0], moved)
        ]
        assert match, "every output is a reflect-padded shift of its own patch"
        moves.add(match[0])
    assert len(moves) > 10
    rolled = np.roll(patches[0], 3, axis=0)
    shifted = shift_images(patches[:1], [(3, 0)])[0]
    assert np.array_equal(shifted[3:], patches[0, :-3])  # content moved down by 3
    assert np.array_equal(shifted[:3], patches[0, 3:0:-1])  # mirrored edge, …
    assert not np.array_equal(shifted[:3], rolled[:3])  # … not the bottom rows wrapped round


def test_hed_layer_is_the_numpy_hed_jitter(patches):
    alpha, beta = stain.hed_factors(len(patches), 0.1, np.random.default_rng(0))
    expected = stain.apply_hed(patches, alpha, beta)
    got = keras.ops.convert_to_numpy(apply_hed(patches, alpha[:, None, None], beta[:, None, None]))
    got = np.clip(np.round(got), 0, 255).astype(np.uint8)
    assert np.abs(got.astype(int) - expected).max() <= 1  # float32 rounding only
    assert (np.abs(got.astype(int) - expected) > 0).mean() < 0.01


def test_colour_layer_has_the_documented_strength(patches):
    out = run(RandomColour(0.1, seed=3), patches).astype(float)
    change = np.abs(out - patches).mean(axis=(1, 2, 3))
    assert (change > 0).all() and (change < 0.25 * 255).all()


def test_reinhard_layer_matches_numpy_and_hits_its_target(patches):
    target = stain.reinhard_target(patches)
    layer = ReinhardNormalization(*target)
    out = run(layer, patches, training=False)  # active at inference too
    assert out.dtype == np.uint8 and out.shape == patches.shape
    assert np.abs(out.astype(int) - stain.reinhard_normalise(patches, *target)).max() <= 1
    lab = stain.rgb_to_lab(out).reshape(len(out), -1, 3)
    tissue = patches.reshape(len(patches), -1).std(axis=1) > 20  # skip near-blank patches
    means = lab[tissue].mean(axis=1)
    assert np.abs(np.median(means, axis=0) - target[0]).max() < 0.05


def test_front_layers_make_a_flat_training_model_whose_inference_is_unchanged(patches, tmp_path):
    config = TrainConfig(
        model="pcamnet", augment=True, shift=4, color_jitter=0.1, hed_jitter=0.1,
        augment_on="model", stain_norm="reinhard",
    )  # fmt: skip
    keras.utils.set_random_seed(0)
    base = build_model("pcamnet", image_size=64, widths=(8, 16))
    plain = base.predict(patches, verbose=0)
    model = with_input_layers(base, model_front(config, patches))
    names = [layer.name for layer in model.layers]
    assert names[:7] == [
        "patch", "stain_norm", "aug_dihedral", "aug_shift", "aug_hed", "aug_colour", "centre_crop"
    ]  # fmt: skip
    assert model.count_params() == base.count_params()
    assert model.get_layer("s1_conv1") is base.get_layer("s1_conv1")  # same layers, flat
    generators = [g for layer in model._flatten_layers() for g in layer._seed_generators]
    assert len(generators) == 5  # 4 augmentations + Dropout

    no_norm = with_input_layers(base, model_front(config.replace(stain_norm=None), patches))
    np.testing.assert_allclose(no_norm.predict(patches, verbose=0), plain, atol=1e-6)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(
        loaded.predict(patches, verbose=0), model.predict(patches, verbose=0), atol=1e-6
    )
    assert loaded.get_layer("stain_norm").means == model.get_layer("stain_norm").means


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
