"""The one place pcamlib relies on a Keras detail that is not public API; tests guard it.

Resuming a run bit-identically means reseeding every ``keras.random.SeedGenerator`` of the
model (Dropout, random augmentation layers), because ``.keras`` files do not store their
states. ``model.variables`` is public and documented to include those states; picking them
out by the variable name Keras gives them is the undocumented part.
``tests/test_keras_shim.py`` fails if a Keras release changes it.
"""

from __future__ import annotations

import keras

__all__ = ["SEED_STATE", "seed_states"]

SEED_STATE = "seed_generator_state"  # keras.random.SeedGenerator's name for its state variable


def seed_states(model: keras.Model) -> list[keras.Variable]:
    """Every SeedGenerator state in ``model`` (nested too), in a fixed order; assign [seed, 0]."""
    return [v for v in model.variables if v.name == SEED_STATE]
