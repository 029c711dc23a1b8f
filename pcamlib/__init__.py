"""pcamlib: metastasis detection in histopathology patches (PCam / Kaggle HCD).

Modules, one job each (the README's library map), imports flowing one way: ``sources`` →
``cache`` → ``stream`` → ``models`` → ``train`` → ``metrics``/``evaluate`` →
``submission``. Import what you need from the modules; this package imports nothing heavy.
"""

__version__ = "0.1.0"
