"""pcamlib: metastasis detection in histopathology patches (PCam / Kaggle HCD).

Modules, one job each: ``sources`` (read layouts) → ``cache`` (pack once) → ``data``
(split, stream) → ``models`` → ``train`` → ``metrics``/``evaluate`` → ``submission``;
``plots``, ``gradcam`` and ``diagrams`` draw. Import what you need from the modules;
this package imports nothing heavy at import time.
"""

__version__ = "0.1.0"
