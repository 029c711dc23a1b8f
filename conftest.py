"""Test configuration for `pytest` and `pytest --nbval`: the smoke switch lives here.

Notebook kernels inherit this environment, so the series runs the same code path as a real
run, only smaller, and writes its artefacts to a throw-away folder instead of outputs/.
"""

import os
import tempfile

from notebooks.series import quiet_kernels  # pytest puts this folder on sys.path

os.environ["PCAM_SMOKE"] = "1"
os.environ.setdefault("PCAM_OUT", tempfile.mkdtemp(prefix="pcam-test-outputs-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

quiet_kernels()
