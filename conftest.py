"""Test configuration for `pytest` and `pytest --nbval`: the smoke switch lives here.

Notebook kernels inherit this environment, so the series runs the same code path as a real
run, only smaller, and writes its artefacts to a throw-away folder instead of outputs/.
"""

import os
import tempfile

os.environ["PCAM_SMOKE"] = "1"
os.environ.setdefault("PCAM_OUT", tempfile.mkdtemp(prefix="pcam-test-outputs-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pcamlib.notebook import quiet_kernels  # noqa: E402  (after the environment is set)

quiet_kernels()
