"""Splits and PatchStream: stratified/grouped splits, epoch orders, augmentation, Keras epochs."""

import keras
import numpy as np
import pytest

from pcamlib.augment import dihedral
from pcamlib.cache import pack
from pcamlib.config import SAMPLE_DIR
from pcamlib.sources import DataError
from pcamlib.stream import PatchStream, split_indices


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory):
    return pack(SAMPLE_DIR, tmp_path_factory.mktemp("cache"), progress=False)


def numbered_images(n: int) -> np.ndarray:
    """Image i carries its own index in pixel (0, 0), so batches can be traced to rows."""
    images = np.zeros((n, 96, 96, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return images


def rows_of(x: np.ndarray) -> np.ndarray:
    return x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 0, 1].astype(int)


def epoch_rows(stream: PatchStream) -> np.ndarray:
    return np.concatenate([rows_of(stream[i][0]) for i in range(len(stream))])


@pytest.mark.parametrize("n_pos, n_neg", [(800, 800), (131, 370), (7, 93)])
def test_stratified_split_keeps_class_ratio_within_one_item(n_pos, n_neg):
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    np.random.default_rng(0).shuffle(labels)
    train, val = split_indices(labels, val_fraction=0.25, seed=1)
    assert np.intersect1d(train, val).size == 0 and np.union1d(train, val).size == len(labels)
    assert abs(len(val) - 0.25 * len(labels)) <= 1
    assert abs(labels[val].sum() - len(val) * n_pos / len(labels)) <= 1
    again = split_indices(labels, val_fraction=0.25, seed=1)
    assert (again[0] == train).all() and (again[1] == val).all()


def test_grouped_split_puts_no_slide_on_both_sides():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 40, 2000).astype(str)
    labels = (rng.random(2000) < 0.4).astype(int)
    train, val = split_indices(labels, val_fraction=0.25, seed=5, groups=groups)
    assert not set(groups[train]) & set(groups[val])
    assert np.union1d(train, val).size == 2000 and 0.15 < len(val) / 2000 < 0.35
    with pytest.raises(DataError, match="slide group"):
        split_indices(labels[:10], groups=np.zeros(10))


def test_each_epoch_is_a_permutation_and_depends_only_on_seed_and_epoch():
    images, indices = numbered_images(1000), np.arange(3, 1000, 3)
    labels = np.arange(1000) % 2
    stream = PatchStream(images, labels, indices, batch_size=64, shuffle=True, seed=7)
    orders = []
    for _ in range(3):
        batches = [stream[i] for i in range(len(stream))]
        served = np.concatenate([rows_of(x) for x, _ in batches])
        assert sorted(served) == indices.tolist()  # every row exactly once
        for x, y in batches:
            assert (y == rows_of(x) % 2).all()  # labels travel with their images
        orders.append(served)
        stream.on_epoch_end()
    assert not (orders[0] == orders[1]).all() and not (orders[1] == orders[2]).all()
    twin = PatchStream(images, labels, indices, batch_size=64, shuffle=True, seed=7)
    twin.set_epoch(2)
    assert (epoch_rows(twin) == orders[2]).all()
    other = PatchStream(images, labels, indices, batch_size=64, shuffle=True, seed=8)
    assert not (epoch_rows(other) == orders[0]).all()
    plain = PatchStream(images, None, indices, batch_size=100)
    assert (epoch_rows(plain) == indices).all()
    assert len(plain[0]) == 1  # unlabelled: (images,)


def test_dihedral_views_are_the_eight_symmetries():
    image = np.random.default_rng(0).integers(0, 256, (1, 96, 96, 3), dtype=np.uint8)
    views = [dihedral(image, k)[0] for k in range(8)]
    assert (views[0] == image[0]).all() and (views[4] == image[0, :, ::-1]).all()
    assert (views[1] == np.rot90(image[0])).all()
    assert len({v.tobytes() for v in views}) == 8


def test_augmentation_keeps_pixels_and_uses_all_eight_views(sample_cache):
    rows = np.arange(32)
    stream = PatchStream(sample_cache.images, sample_cache.labels, rows, batch_size=32,
                         augment=True, seed=1)  # fmt: skip
    x, y = stream[0]
    originals = np.asarray(sample_cache.images[rows])
    assert (y == sample_cache.labels[rows]).all()
    for got, orig in zip(x, originals, strict=True):
        assert (np.sort(got, axis=None) == np.sort(orig, axis=None)).all()  # same pixel multiset
    used = set()
    for _ in range(4):
        for got, orig in zip(stream[0][0], originals, strict=True):
            used |= {k for k in range(8) if (dihedral(orig[None], k)[0] == got).all()}
        stream.on_epoch_end()
    assert used == set(range(8))


def test_centre_crop(sample_cache):
    stream = PatchStream(sample_cache.images, sample_cache.labels, batch_size=16, crop=64)
    x, _ = stream[0]
    assert x.shape == (16, 64, 64, 3)
    np.testing.assert_array_equal(x, np.asarray(sample_cache.images[:16, 16:80, 16:80]))
    with pytest.raises(ValueError, match="crop"):
        PatchStream(sample_cache.images, crop=100)


def test_model_fit_gets_a_new_permutation_every_epoch(sample_cache):
    """Keras really calls on_epoch_end between epochs of model.fit (checked on this backend)."""
    served = []

    class Recording(PatchStream):
        def __getitem__(self, i):
            batch = super().__getitem__(i)
            served.append((self.epoch, i, self._order[i * 50 : (i + 1) * 50].copy()))
            return batch

    indices = np.arange(0, 1600, 4)
    stream = Recording(sample_cache.images, sample_cache.labels, indices, batch_size=50,
                       shuffle=True, seed=3)  # fmt: skip
    model = keras.Sequential([
        keras.Input((96, 96, 3)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1, activation="sigmoid"),
    ])  # fmt: skip
    model.compile("sgd", "binary_crossentropy")
    model.fit(stream, epochs=3, verbose=0)
    by_epoch = {}
    for epoch, i, rows in served:
        by_epoch.setdefault(epoch, {})[i] = rows
    whole = {e: b for e, b in by_epoch.items() if len(b) == len(stream)}
    full = {e: np.concatenate([b[i] for i in sorted(b)]) for e, b in whole.items()}
    assert len(full) >= 3, sorted(by_epoch)  # three epochs, each served as a whole
    for rows in full.values():
        assert sorted(rows) == indices.tolist()
    orders = [full[e] for e in sorted(full)][-3:]
    assert not (orders[0] == orders[1]).all() and not (orders[1] == orders[2]).all()


def test_stream_rejects_bad_arguments(sample_cache):
    with pytest.raises(DataError, match="empty"):
        PatchStream(sample_cache.images, indices=np.array([], int))
    with pytest.raises(IndexError):
        PatchStream(sample_cache.images, indices=np.array([1600]))
    with pytest.raises(ValueError, match="labels"):
        PatchStream(sample_cache.images, np.zeros(3))


def test_shift_moves_each_image_within_the_limit_and_jitter_stays_mild(sample_cache):
    from pcamlib.augment import jitter_colour, random_shift

    x = np.asarray(sample_cache.images[:16])
    rng = np.random.default_rng(0)
    shifted = random_shift(x, 4, rng)
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    for original, moved in zip(padded, shifted, strict=True):
        found = [
            (dy, dx)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if np.array_equal(original[4 - dy : 100 - dy, 4 - dx : 100 - dx], moved)
        ]
        assert found, "every image is a shift of at most 4 px, its border mirrored in"
    jittered = jitter_colour(x, 0.1, rng)
    assert jittered.dtype == np.uint8 and jittered.shape == x.shape
    change = np.abs(jittered.astype(int) - x.astype(int)).mean(axis=(1, 2, 3))
    assert (change > 0).all() and (change < 0.25 * 255).all()


def test_stream_augmentation_is_reproducible_per_seed_epoch_and_batch(sample_cache):
    def batch(seed, epoch):
        stream = PatchStream(
            sample_cache.images,
            sample_cache.labels,
            batch_size=8,
            seed=seed,
            augment=True,
            shift=4,
            color_jitter=0.1,
            hed_jitter=0.1,
        )
        stream.set_epoch(epoch)
        return stream[0][0]

    assert np.array_equal(batch(1, 0), batch(1, 0))
    assert not np.array_equal(batch(1, 0), batch(1, 1))
    assert not np.array_equal(batch(1, 0), batch(2, 0))
