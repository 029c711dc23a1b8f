"""pcamlib: metastasis detection in histopathology patches (PCam / Kaggle HCD).

One job per module, imports flowing down this list (``config`` and ``sources`` reach ``pcam``
only inside the functions that open PCam's layout):

- ``config``: ``TrainConfig``, its checks and the recipes; where data and outputs are
- ``sources``: the layouts users have (Kaggle TIFFs, class folders), bad items named
- ``cache``: decode once into a verified uint8 memmap; ``load_patches`` is the one call
- ``augment``: host (numpy) and in-model (Keras) transforms, HED jitter, Reinhard
- ``pretrained``: the shipped PCamNet
- ``pcam``: PCam's HDF5 release, read as a source (``open_source`` calls it) and downloaded
- ``stream``: the protocol's train / val / test rows of a run, and its batches
- ``models``: CNNModel1/2, the VGG16/VGG19/ResNet50 heads, PCamNet, ImageNet weights
- ``train``: resumable runs, precision and distribution on this machine
- ``metrics``, ``evaluate``: AUC with DeLong intervals, TTA×8, the leaderboard
- ``submission``, ``kaggle``: Kaggle CSVs checked before they cost a submission; the
  competition's data, submit, score, and ``get_full_data`` (Kaggle's or PCam's)
- ``plots``, ``gallery``: charts and diagrams; patch pictures and Grad-CAM
- ``notebook``, ``cli``: each notebook's ``start()``; ``pcam``

The one-call functions are importable from here (``from pcamlib import load_patches``), each
importing only its own module, so ``import pcamlib`` stays instant; ``train`` and ``evaluate``
are modules (``from pcamlib.train import train``).
"""

import importlib

__version__ = "0.1.0"

# Each one-call function and the module it lives in.
_HOME = {
    "load_patches": "cache", "TrainConfig": "config", "build_model": "models",
    "load_model": "train", "predict_proba": "metrics", "results_table": "evaluate",
    "write_submission": "submission", "check_submission": "submission", "start": "notebook",
    "get_full_data": "kaggle", "pretrained_run": "pretrained",
}  # fmt: skip
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'pcamlib' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
