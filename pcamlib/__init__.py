"""pcamlib: metastasis detection in histopathology patches (PCam / Kaggle HCD).

Modules, one job each: ``sources`` (read layouts) → ``cache`` (pack once) → ``data``
(split, stream; transforms in ``augment``) → ``models`` → ``train`` (``recipes``,
``devices``) → ``metrics``/``evaluate`` → ``submission``; ``plots``, ``gradcam`` and
``diagrams`` draw; ``cli``, ``download`` and ``run_series`` are the entry points.
Import what you need from the modules; this package imports nothing heavy at import time.
"""

__version__ = "0.1.0"
