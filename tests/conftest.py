"""Fixtures shared by several test modules."""

import pytest

from pcamlib.config import SAMPLE_DIR, TrainConfig
from pcamlib.train import train


@pytest.fixture(scope="session")
def tiny_run():
    """``tiny_run(out, **changes)``: a 2-step pcamnet run on the sample, in a few seconds."""

    def run(out, **changes):
        settings = dict(
            epochs=1, steps_per_epoch=2, batch_size=32, model_kwargs={"widths": [8, 16]}
        )
        config = TrainConfig(
            model="pcamnet", data=str(SAMPLE_DIR), out=str(out), **settings | changes
        )
        return train(config, verbose=0)

    return run
