"""pcamlib: metastasis detection in histopathology patches (PCam / Kaggle HCD).

Modules, one job each, imports flowing one way: ``sources`` (read layouts) → ``cache``
(pack once) → ``data``/``protocol`` (stream, split; transforms in ``augment``,
``augment_layers``, ``stain``) → ``models`` → ``train`` (``recipes``, ``devices``) →
``metrics``/``evaluate`` → ``submission``; ``plots``, ``gallery``, ``stain_plots``,
``gradcam`` and ``diagrams`` draw; ``notebook``, ``cli``, ``download`` and ``run_series`` are
the entry points; ``config``/``limits`` hold the settings, ``io``/``checks``/``quiet``/
``keras_shim`` the small shared helpers. The README's library map says what each does.
Import what you need from the modules; this package imports nothing heavy at import time.
"""

__version__ = "0.1.0"
