"""Precision by device, and scale-out: MirroredStrategy on 2 logical CPUs, JAX DataParallel."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

import pcamlib.train as train_module
from pcamlib.cache import pack
from pcamlib.config import REPO_ROOT, SAMPLE_DIR, TrainConfig
from pcamlib.models import build_model
from pcamlib.train import compile_model, make_optimizer


@pytest.mark.parametrize(
    "mode, kind, bf16, expected",
    [
        ("auto", "cpu", False, "float32"),
        ("auto", "gpu", False, "mixed_float16"),  # V100, T4: no fast bfloat16
        ("auto", "gpu", True, "mixed_bfloat16"),  # A100, H100
        ("on", "cpu", False, "mixed_bfloat16"),
        ("on", "gpu", False, "mixed_float16"),
        ("off", "gpu", True, "float32"),
        ("float16", "cpu", False, "mixed_float16"),
        ("bfloat16", "gpu", False, "mixed_bfloat16"),
    ],
)
def test_precision_policy_follows_the_device(monkeypatch, mode, kind, bf16, expected):
    monkeypatch.setattr(train_module, "accelerator", lambda: (kind, 1))
    monkeypatch.setattr(train_module, "_device_details", lambda: ("GPU", 8 if bf16 else 7))
    assert train_module.precision_policy(mode) == expected


def test_precision_policy_rejects_unknown_modes():
    with pytest.raises(ValueError, match="mixed_precision"):
        train_module.precision_policy("fp8")


@pytest.mark.parametrize("mode", ["float16", "bfloat16"])
def test_mixed_model_keeps_a_float32_output_and_the_policy_is_restored(mode):
    with train_module.precision(mode) as policy:
        model = build_model("cnn1")
        compile_model(model, make_optimizer(TrainConfig(schedule="cosine"), 10))
    assert policy == f"mixed_{mode}" and keras.config.dtype_policy().name == "float32"
    assert model.get_layer("block1_conv1").compute_dtype == mode
    assert model.get_layer("tumor_prob").compute_dtype == "float32"
    probs = model(np.zeros((2, 96, 96, 3), np.uint8))
    assert keras.backend.standardize_dtype(probs.dtype) == "float32"
    # float16 needs loss scaling; compile adds it, and the LR (a schedule) stays readable.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (mode == "float16")
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) > 0


def test_no_strategy_on_one_cpu():
    scope, replicas = train_module.distribution("auto")
    assert replicas == 1
    with pytest.raises(ValueError, match="strategy"):
        train_module.distribution("horovod")


# Scale-out needs a fresh process: logical devices must be set before the backend starts.
TF_MIRRORED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""
JAX_WITHOUT_TF = """
import sys
class NoTensorFlow:  # as on a JAX-only GPU machine
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTensorFlow())
"""
TRAIN_ONE_EPOCH = """
import json, sys
from pcamlib.config import TrainConfig
from pcamlib.train import train
result = train(TrainConfig(**json.loads(sys.argv[1])), verbose=0)
assert ("tensorflow" in sys.modules) == (sys.argv[2] == "tensorflow"), "backend leak"
print(json.dumps({"history": result.history.to_dict("records")}))
"""


@pytest.fixture(scope="module")
def scale_out_runs(tmp_path_factory):
    """Start both 2-replica runs at once (one CPU-bound process each), collect them later."""
    cache = pack(SAMPLE_DIR, tmp_path_factory.mktemp("cache"), progress=False)
    runs = {}
    for backend, prelude, env in (
        ("tensorflow", TF_MIRRORED, {}),
        ("jax", JAX_WITHOUT_TF, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}),
    ):
        out = tmp_path_factory.mktemp(backend)
        config = TrainConfig(
            model="pcamnet",  # Dropout: its SeedGenerator runs under the strategy too
            model_kwargs={"widths": [8, 16]},
            augment=True,
            data=str(cache.path),
            out=str(out),
            epochs=1,
            val_fraction=0.079,  # 127 images: trimmed to 126 (JAX shards only even batches)
            batch_size=16,
            steps_per_epoch=3,
            strategy="mirrored",
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", prelude + TRAIN_ONE_EPOCH, config.to_json(), backend],
            cwd=REPO_ROOT,
            env={**os.environ, **env, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs[backend] = (proc, out)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_replicas_train_with_doubled_batch_and_lr(scale_out_runs, backend):
    proc, out = scale_out_runs[backend]
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    (row,) = json.loads(stdout.strip().splitlines()[-1])["history"]
    state = json.loads((out / "state.json").read_text())
    assert state["replicas"] == 2
    assert (pd.read_csv(out / "split.csv").subset == "val").sum() == 126
    assert row["learning_rate"] == pytest.approx(2 * TrainConfig().lr)
    assert 0 <= row["val_auc"] <= 1 and np.isfinite(row["loss"])


def test_a_float16_run_trains_without_a_nan_loss_and_predicts_float32(tiny_run, tmp_path):
    """The T4 policy: float16 compute with loss scaling, float32 probabilities out."""
    result = tiny_run(tmp_path / "fp16", mixed_precision="float16", steps_per_epoch=4)
    assert json.loads((result.run_dir / "state.json").read_text())["policy"] == "mixed_float16"
    assert np.isfinite(result.history[["loss", "val_loss"]].to_numpy()).all()
    model = keras.saving.load_model(result.best_model_path, compile=False)
    assert model.get_layer("s1_conv1").compute_dtype == "float16"
    probs = keras.ops.convert_to_numpy(model(np.full((4, 96, 96, 3), 200, np.uint8)))
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
    assert ((probs >= 0) & (probs <= 1)).all()
