"""The one place pcamlib relies on a Keras detail that is not public API.

Resuming bit-identically means reseeding every ``keras.random.SeedGenerator`` (Dropout, random
augmentation layers): ``.keras`` files do not store their states. ``model.variables`` includes
them; picking them out by name is the undocumented part, guarded by ``tests/test_keras_shim.py``.
"""

from __future__ import annotations

import keras

__all__ = ["SEED_STATE", "seed_states"]

SEED_STATE = "seed_generator_state"  # keras.random.SeedGenerator's name for its state variable


def seed_states(model: keras.Model) -> list[keras.Variable]:
    """Every SeedGenerator state in ``model`` (nested too), in a fixed order; assign [seed, 0]."""
    return [v for v in model.variables if v.name == SEED_STATE]
