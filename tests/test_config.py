"""The smoke switch, settings and named recipes."""

import pytest

from pcamlib.config import SAMPLE_DIR, TrainConfig, settings
from pcamlib.recipes import RECIPES, apply_recipe


def test_smoke_settings_shrink_runs_but_keep_the_code_path(monkeypatch):
    monkeypatch.setenv("PCAM_SMOKE", "1")
    s = settings()
    assert s.smoke and s.weights is None and s.data_dir == SAMPLE_DIR
    config = s.train_config(model="vgg16", out="x", epochs=5)
    assert (config.epochs, config.steps_per_epoch, config.val_limit) == (1, 3, s.eval_limit)
    assert config.data == str(SAMPLE_DIR) and config.model == "vgg16"


def test_real_settings_keep_what_the_notebook_asked_for(monkeypatch):
    monkeypatch.setenv("PCAM_SMOKE", "0")
    s = settings()
    config = s.train_config(model="cnn1", out="x", epochs=7)
    assert (config.epochs, config.steps_per_epoch, config.val_limit) == (7, None, None)
    assert s.epochs(5, cpu=2) == (2 if s.accelerator == "cpu" else 5)


def test_recipe_fills_the_config_and_explicit_choices_win():
    config = apply_recipe(TrainConfig(recipe="pcam-cpu", data="d", out="o", epochs=2))
    assert config.epochs == 2
    assert config.model == RECIPES["pcam-cpu"]["model"] and config.tta == 8 and config.augment
    assert apply_recipe(config) == config  # idempotent: train() applies it again


def test_unknown_recipe_and_config_keys_are_refused():
    with pytest.raises(ValueError, match="unknown recipe"):
        apply_recipe(TrainConfig(recipe="magic"))
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_json('{"model": "cnn1", "epochz": 3}')
