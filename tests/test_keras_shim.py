"""The Keras detail pcamlib.keras_shim relies on: fails loudly when a Keras release changes it."""

import keras
import numpy as np

from pcamlib.keras_shim import SEED_STATE, seed_states


def _model() -> keras.Model:
    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, keras.layers.Dropout(0.5)(inner_in), name="inner")
    inp = keras.Input((8,))
    x = keras.layers.Dense(8)(keras.layers.Dropout(0.5)(inp))
    return keras.Model(inp, inner(x))


def test_seed_generator_state_keeps_its_name():
    assert keras.random.SeedGenerator(1).state.name == SEED_STATE


def test_finds_every_dropout_generator_nested_ones_included():
    model = _model()
    states = seed_states(model)
    assert len(states) == 2 and len({id(s) for s in states}) == 2
    assert all(tuple(s.shape) == (2,) for s in states)


def test_reseeding_the_states_replays_the_dropout_masks():
    model, x = _model(), np.ones((4, 8), "float32")

    def run(seed: int) -> np.ndarray:
        for i, state in enumerate(seed_states(model)):
            state.assign(np.array([seed + i, 0], state.dtype))
        return keras.ops.convert_to_numpy(model(x, training=True))

    np.testing.assert_array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))
