"""Settings: the smoke switch, named recipes, and the refusal of settings that cannot be
honoured, up front, in one line, with nothing written."""

import subprocess
import sys
import urllib.error

import pytest

from pcamlib.cli import main
from pcamlib.config import RECIPES, SAMPLE_DIR, SettingError, TrainConfig
from pcamlib.notebook import settings


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


# One row per setting: the flags, and what the one-line refusal must contain.
BAD_TRAIN = [
    (["--lr", "-1"], "--lr -1"),
    (["--lr", "0"], "--lr 0"),
    (["--lr", "nan"], "--lr nan"),
    (["--epochs", "0"], "--epochs 0"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--image-size", "7"], "--image-size 7: cnn1 takes 16"),
    (["--model", "pcamnet", "--image-size", "200"], "--image-size 200: pcamnet"),
    (["--model", "vgg16", "--image-size", "16"], "--image-size 16: vgg16 takes 32"),
    (["--val-fraction", "0"], "--val-fraction 0"),
    (["--seed", "-5"], "--seed -5"),
    (["--shift", "-1"], "--shift -1"),
    (["--color-jitter", "1.5"], "--color-jitter 1.5"),
    (["--hed-jitter", "-0.1"], "--hed-jitter -0.1"),
    (["--weight-decay", "-1"], "--weight-decay -1"),
    (["--optimizer", "adam", "--weight-decay", "0.1"], "--weight-decay 0.1: only adamw"),
    (["--warmup-epochs", "-1"], "--warmup-epochs -1"),
    (["--warmup-epochs", "3", "--epochs", "2"], "--warmup-epochs 3: at most"),
    (["--label-smoothing", "2"], "--label-smoothing 2"),
    (["--early-stopping", "0"], "--early-stopping 0"),
    (["--steps-per-epoch", "0"], "--steps-per-epoch 0"),
    (["--val-limit", "1"], "--val-limit 1"),
    (["--workers", "0"], "--workers 0"),
    (["--weights", "imagenet"], "--weights imagenet: cnn1 has no pretrained weights"),
    (["--trainable", "no"], "--trainable no"),
    (["--groups-csv", "slides.csv"], "--groups-csv slides.csv"),
    (["--split", "slide", "--groups-csv", "nowhere.csv"], "--groups-csv nowhere.csv: no such"),
    (["--recipe", "magic"], "--recipe magic"),
    (["--data", "no/such/dir"], "--data no/such/dir: no such"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_TRAIN, ids=[" ".join(f) for f, _ in BAD_TRAIN])
def test_bad_train_setting_is_refused_in_one_line_before_anything_is_written(
    flags, message, tmp_path, capsys
):
    out = tmp_path / "run"
    args = ["train", "--data", str(SAMPLE_DIR), "--out", str(out), "--epochs", "1", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_train_flags_parse_into_the_values_they_name(monkeypatch, tmp_path):
    """The flags come from TrainConfig's fields: "none", "yes"/"no", "8" become None, bools, 8."""
    from pcamlib import config

    seen = []

    def spy(self):
        seen.append(self)
        raise SettingError("data", self.data, "stop here")

    monkeypatch.setattr(config.TrainConfig, "__post_init__", spy)
    flags = "--weights none --trainable no --no-augment --tensorboard --tta 8".split()
    assert main(["train", "--data", "d", "--out", str(tmp_path / "o"), *flags]) == 2
    (got,) = seen
    values = (got.weights, got.trainable, got.augment, got.tensorboard, got.tta)
    assert values == (None, False, False, True, 8)
    assert (got.model, got.epochs, got.recipe) == ("cnn1", 5, None)  # unset flags: defaults


def test_train_help_shows_each_settings_trailing_comment_and_values(monkeypatch, capsys):
    """One text per setting: its trailing comment in TrainConfig is its pcam train --help."""
    import dataclasses

    from pcamlib.cli import field_comments

    comments = field_comments(TrainConfig)
    assert set(comments) == {f.name for f in dataclasses.fields(TrainConfig)}
    monkeypatch.setenv("COLUMNS", "400")  # no help text wraps
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    flags = {}  # "--epochs": its usage and help, joined
    for line in capsys.readouterr().out.split("options:\n")[1].splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
        flags[flag] = flags.get(flag, "") + " " + line.strip()
    for name, text in comments.items():
        assert name == "model_kwargs" or text in flags["--" + name.replace("_", "-")], name
    assert flags["--epochs"].endswith("passes over the training rows (an integer ≥ 1 and ≤ 10000)")
    assert flags["--val-limit"].endswith("(an integer ≥ 2, or unset)")
    assert "{imagenet,none}" in flags["--weights"] and "--no-augment" in flags["--augment"]


BAD_RUN = [
    (["evaluate", "--model", "m", "--data", "d", "--batch-size", "0"], "--batch-size 0"),
    (["evaluate", "--model", "m", "--data", "d", "--operating-point", "1.5"], "--operating-point"),
    (["evaluate", "--model", "m", "--data", "d", "--operating-point", "0"], "--operating-point 0"),
    (["predict", "--model", "m", "--data", "d", "--out", "s.csv", "--batch-size", "-2"], "-2"),
    (["pack", "src", "--out", "c", "--workers", "0"], "--workers 0"),
]


@pytest.mark.parametrize(("args", "message"), BAD_RUN, ids=[" ".join(a) for a, _ in BAD_RUN])
def test_bad_evaluate_predict_pack_arguments_are_refused_by_name(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "must be" in err and len(err.splitlines()) == 1, err


def test_python_api_names_the_setting_as_python_spells_it():
    with pytest.raises(SettingError, match=r"^lr=-1: must be a number > 0"):
        TrainConfig(lr=-1)
    with pytest.raises(SettingError, match=r"^image_size=7: cnn1 takes 16 to 512"):
        TrainConfig(image_size=7)
    with pytest.raises(SettingError, match=r"^weights='imagenet': .* \(or no weights\)"):
        TrainConfig(model="cnn2", weights="imagenet")
    with pytest.raises(SettingError, match=r"model_kwargs=.*cnn1 takes none, not 'widths'"):
        TrainConfig(model_kwargs={"widths": [8]})
    config = TrainConfig(model="pcamnet", model_kwargs={"widths": [8, 16]}, image_size=32)
    with pytest.raises(SettingError, match="pcamnet centre-crops 2 to 96"):
        config.replace(image_size=1)  # replace() checks too
    with pytest.raises(SettingError, match="pcamnet centre-crops 4 to 96"):  # a stem halves too
        config.replace(model_kwargs={"widths": [8, 16], "stem": 8}, image_size=2)
    with pytest.raises(SettingError, match=r"stem must be an integer ≥ 0 and ≤ 1024"):
        config.replace(model_kwargs={"widths": [8, 16], "stem": -1})
    with pytest.raises(SettingError, match=r"widths must be a non-empty list of integers ≥ 1"):
        config.replace(model_kwargs={"widths": [8, 0.5]})
    with pytest.raises(SettingError, match=r"^augment=1: must be one of True, False$"):
        TrainConfig(augment=1)
    with pytest.raises(SettingError, match=r"^early_stopping=0: .* ≥ 1, or unset$"):
        TrainConfig(early_stopping=0)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: Keras' own download step fails as it does without one."""
    import keras.src.utils.file_utils as file_utils

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    return tmp_path / "keras" / "models"


def test_offline_imagenet_weights_are_one_line_and_leave_nothing(offline, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(SAMPLE_DIR), "--out", str(out), "--model", "vgg19"]
    assert main([*args, "--weights", "imagenet"]) == 2
    err = capsys.readouterr().err.strip()
    fname = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "--weights imagenet: cannot download" in err and "no network" in err
    assert f"/{fname} in {offline}/" in err and "weights=None to train vgg19" in err
    assert not out.exists()

    offline.mkdir(parents=True)
    (offline / fname).write_bytes(b"half a file")  # a corrupt cached copy
    assert main([*args, "--weights", "imagenet"]) == 2
    assert "cached vgg19_weights" in capsys.readouterr().err
    assert not out.exists()


def test_python_train_refuses_unavailable_weights_and_resolve_weights_falls_back(offline):
    from pcamlib.models import WeightsUnavailable, resolve_weights
    from pcamlib.train import train

    config = TrainConfig(model="vgg16", weights="imagenet", data=str(SAMPLE_DIR), out="x")
    with pytest.raises(WeightsUnavailable, match=r"or use weights=None to train vgg16"):
        train(config)
    with pytest.warns(UserWarning, match="cannot download vgg16"):
        assert resolve_weights("imagenet") is None


@pytest.mark.parametrize("name", ["vgg16", "vgg19", "resnet50"])
def test_weight_files_are_the_ones_keras_applications_loads(name, monkeypatch):
    import keras
    import keras.src.utils.file_utils as file_utils

    from pcamlib.models import _KERAS_WEIGHTS, BACKBONES, IMAGENET_FILES

    asked = {}

    def record(fname, origin, **kwargs):
        asked.update(fname=fname, origin=origin, file_hash=kwargs.get("file_hash"))
        raise RuntimeError("recorded")

    monkeypatch.setattr(file_utils, "get_file", record)
    with pytest.raises(RuntimeError, match="recorded"):
        BACKBONES[name][0](weights="imagenet", include_top=False, input_shape=(32, 32, 3))
    keras.backend.clear_session()
    folder, fname, file_hash = IMAGENET_FILES[name]
    assert asked == {
        "fname": fname,
        "origin": _KERAS_WEIGHTS + folder + fname,
        "file_hash": file_hash,
    }


LIGHT = """
import sys
sys.argv = ["pcam", *sys.argv[1:]]
import pcamlib.cli
pcamlib.cli.build_parser()
try:
    pcamlib.cli.main()
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "jax"))
print("HEAVY", heavy)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["train", "--data", "d", "--out", "o", "--lr", "oops"],
        ["train", "--data", "d", "--out", "o", "--epochs", "0"],
        ["check-submission", "s.csv", "--data", "nowhere"],
    ],
)
def test_cli_answers_help_and_argument_errors_without_importing_tensorflow(argv):
    run = subprocess.run(
        [sys.executable, "-c", LIGHT, *argv], capture_output=True, text=True, timeout=60
    )
    assert "HEAVY []" in run.stdout, run.stdout + run.stderr
    assert "absl" not in run.stderr and "cuda" not in run.stderr


def test_a_batch_larger_than_the_training_split_is_refused_before_any_file(tmp_path):
    """The split decides how many training rows there are, so this check runs after it."""
    from pcamlib.cache import pack
    from pcamlib.train import train

    cache = pack(SAMPLE_DIR, tmp_path / "cache", progress=False)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"batch_size=2000: must be ≤ the \d+ training rows"):
        train(TrainConfig(data=str(cache.path), out=str(out), batch_size=2000), cache=cache)
    assert not out.exists()
