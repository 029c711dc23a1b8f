"""Keep TensorFlow's native start-up chatter out of the user's terminal and notebooks.

TensorFlow's C++ side logs through absl before any Python setting applies: even with
``TF_CPP_MIN_LOG_LEVEL=3`` a CPU machine prints "Could not find cuda drivers" twice and
"failed call to cuInit" when it looks for devices. Those lines go straight to file
descriptor 2, so only a redirect of that descriptor can catch them. :func:`native_start_up`
does that around the import and device discovery, then passes on every line that is not
known noise: real errors still show.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

NOISE = re.compile(
    r"All log messages before absl::InitializeLog"
    r"|cudart_stub\.cc.*Could not find cuda drivers"
    r"|failed call to cuInit"
    r"|cpu_feature_guard\.cc|To enable the following instructions"
    r"|oneDNN custom operations are on|TF_ENABLE_ONEDNN_OPTS"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning: Could not find TensorRT"
)


@contextlib.contextmanager
def native_start_up():
    """Run the block with fd 2 captured; re-emit everything but :data:`NOISE` afterwards."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (some embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
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
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                if not NOISE.search(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
