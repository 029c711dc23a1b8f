"""The smoke switch, settings and named recipes."""

import pytest

from pcamlib.config import RECIPES, SAMPLE_DIR, SettingError, TrainConfig, settings


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
    config = TrainConfig.from_recipe("pcam-cpu", data="d", out="o", epochs=2)
    assert config.epochs == 2
    assert config.model == RECIPES["pcam-cpu"]["model"] and config.tta == 8 and config.augment
    assert config.replace(data="e").epochs == 2  # replace() does not re-apply the recipe
    assert TrainConfig.from_json(config.to_json()) == config


def test_explicit_choices_win_even_when_they_equal_the_defaults():
    config = TrainConfig.from_recipe("pcam-cpu", epochs=5, batch_size=64, optimizer="adam")
    assert (config.epochs, config.batch_size, config.optimizer) == (5, 64, "adam")
    assert config.weight_decay == 0.0  # the recipe's decay belongs to its adamw
    assert config.model == "pcamnet" and config.lr == RECIPES["pcam-cpu"]["lr"]
    other = TrainConfig.from_recipe("pcam-cpu", model="cnn1")  # its crop/widths stay behind
    assert (other.model, other.image_size, other.model_kwargs, other.tta) == ("cnn1", None, {}, 8)


def test_notebook_and_benchmark_recipe_configs_keep_the_callers_values(monkeypatch):
    import importlib.util

    from pcamlib.config import REPO_ROOT

    monkeypatch.setenv("PCAM_SMOKE", "0")
    config = settings().train_config(recipe="pcam-cpu", out="x", batch_size=64)
    assert (config.model, config.batch_size, config.epochs) == ("pcamnet", 64, 20)
    spec = importlib.util.spec_from_file_location("recipe", REPO_ROOT / "benchmarks" / "recipe.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--train", "t", "--valid", "v", "--out", "o", "--epochs", "5"])
    assert bench.recipe_config(args).epochs == 5
    args = bench.parse_args(["--train", "t", "--valid", "v", "--out", "o"])
    assert bench.recipe_config(args).epochs == RECIPES["pcam-cpu"]["epochs"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_makes_a_valid_config(name):
    config = TrainConfig.from_recipe(name, data="d", out="o")
    assert all(getattr(config, k) == v for k, v in RECIPES[name].items())


def test_unknown_recipe_and_config_keys_are_refused():
    with pytest.raises(SettingError, match="recipe='magic': must be one of pcam-cpu"):
        TrainConfig.from_recipe("magic")
    with pytest.raises(SettingError, match="recipe='magic': must be one of pcam-cpu"):
        TrainConfig(recipe="magic", model="pcamnet")
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_json('{"model": "cnn1", "epochz": 3}')
