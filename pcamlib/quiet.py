"""Keep TensorFlow's native start-up chatter out of the user's terminal and notebooks.

TF ≥ 2.17 logs through absl before its log level applies, straight to file descriptor 2, so
even ``TF_CPP_MIN_LOG_LEVEL=3`` lets a CPU machine print "Could not find cuda drivers" and
"failed call to cuInit". Only a redirect of fd 2 catches them; errors and tracebacks still show.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# absl info/warning lines ("I0000 …", "W0000 …") and their banner; CPU-feature advice.
CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} |"
    r"To enable the following instructions:)"
)
NO_CUDA = re.compile(r"^E\d{4} .*failed call to cuInit")  # noise only without an NVIDIA driver


@contextlib.contextmanager
def native_chatter_dropped():
    """Run the block with fd 2 captured; replay every line but the chatter afterwards."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (some embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            no_driver = not os.path.exists("/proc/driver/nvidia/version")
            kept = [x for x in lines if not (CHATTER.match(x) or no_driver and NO_CUDA.match(x))]
            if kept:
                sys.stderr.write("".join(kept))


def quiet_keras() -> None:
    """Import Keras and let TensorFlow find its devices, without the chatter (once)."""
    if "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_chatter_dropped():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # where CUDA reports itself
