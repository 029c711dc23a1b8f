"""Charts from plain arrays (sklearn's Displays where they exist), stain figure, model diagrams."""

import itertools
import types
import warnings
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from PIL import Image, ImageFont
from sklearn import metrics as skm
from sklearn.calibration import CalibrationDisplay

from .augment import hed_jitter, reinhard_normalise, reinhard_target
from .cache import atomic_path
from .metrics import expected_calibration_error, labels01, validate_binary

CLASS_NAMES = ("normal (0)", "tumour (1)")
_BY_CLASS = {"hue_order": CLASS_NAMES, "palette": ("#4C72B0", "#C44E52")}  # one colour per class
_STEPS = {"element": "step", "common_norm": False, **_BY_CLASS}  # per-class, each normalised
_TITLES = {"loss": "Loss", "accuracy": "Accuracy", "auc": "ROC AUC"}  # train()'s metrics
MAX_CHANNEL_IMAGES = 5000  # plot_channel_stats reads a seeded subset of at most this many
MAX_BOXES = 40  # a diagram of a longer model draws one box per stage


def grid(n: int, ncols: int, cell: tuple[float, float], extra_h: float = 0.0):
    """A figure with ``n`` axes in rows of at most ``ncols`` cells; the spare axes are hidden."""
    ncols, nrows = max(1, min(ncols, n)), max(1, (n + ncols - 1) // ncols)
    size = (ncols * cell[0], nrows * cell[1] + extra_h)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


def _history_panel(ax, history: pd.DataFrame, epochs: np.ndarray, base: str, best) -> None:
    """One metric's train and validation curves (the learning rate: log scale), best marked."""
    if base == "learning_rate":
        ax.plot(epochs, history[base], color="grey", marker=".")
        ax.set(yscale="log", title="Learning rate")
    else:
        for col, label in ((base, "train"), (f"val_{base}", "validation")):
            if col in history:
                ax.plot(epochs, history[col], marker=".", label=label)
        ax.set_title(_TITLES.get(base, base.replace("_", " ")))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if best is not None:
        i, col, label = best
        ax.axvline(epochs[i], color="0.5", linestyle="--", linewidth=1)
        if col == f"val_{base}":
            ax.plot(epochs[i], history[col].iloc[i], "*", ms=14, c="gold", mec="k", label=label)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot_history(history: pd.DataFrame) -> Figure:
    """Train vs validation curves per metric; the best val AUC's epoch (else val loss's) marked."""
    if history.empty:
        raise ValueError("history is empty: no epochs to plot")
    found = {c.removeprefix("val_") for c in history.select_dtypes("number")}
    found -= {"epoch", "learning_rate", "seconds"}
    panels = [b for b in _TITLES if b in found] + sorted(found - set(_TITLES))
    panels += ["learning_rate"] if "learning_rate" in history else []
    if not panels:
        raise ValueError(f"history has no numeric metric columns; columns are {list(history)}")
    epochs, best = history["epoch"].to_numpy(), None
    for col, pick, what in (("val_auc", np.nanargmax, "AUC"), ("val_loss", np.nanargmin, "loss")):
        if best is None and col in history and history[col].notna().any():
            i = int(pick(history[col].to_numpy()))
            best = i, col, f"best val {what} {history[col].iloc[i]:.4f} @ epoch {epochs[i]}"
    fig, axes = grid(len(panels), 3, (5, 3.6))
    for ax, base in zip(axes.flat, panels, strict=False):
        _history_panel(ax, history, epochs, base, best)
    fig.suptitle("Training history" + (f" - {best[2]}" if best else ""))
    fig.tight_layout()
    return fig


def plot_label_balance(labels) -> Figure:
    """Class counts with percentages, to see the imbalance before choosing metrics and splits."""
    y = labels01(labels)
    names = np.take(CLASS_NAMES, y)
    fig, ax = plt.subplots(figsize=(5, 4))
    sns.countplot(x=names, hue=names, order=CLASS_NAMES, legend=False, ax=ax, **_BY_CLASS)
    counts = np.bincount(y, minlength=2)
    for i, c in enumerate(counts):
        ax.text(i, c, f"{c:,}\n({100 * c / len(y):.1f}%)", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(counts) * 1.18)
    ax.set(xlabel="class", ylabel="patches", title=f"Label balance (n = {len(y):,})")
    return fig


def plot_channel_stats(images, labels) -> Figure:
    """Per-class histograms of patch mean R, G, B over a seeded subset: never a whole memmap."""
    y = labels01(labels)
    if len(y) != len(images):
        raise ValueError(f"labels has {len(y)} rows but images has {len(images)}")
    n = min(len(y), MAX_CHANNEL_IMAGES)  # all of them, sorted, when there are fewer
    idx = np.sort(np.random.default_rng(0).choice(len(y), n, replace=False))
    means = np.asarray(images[idx]).mean(axis=(1, 2), dtype=np.float32)
    frame = pd.DataFrame(means, columns=["red", "green", "blue"])
    frame["class"] = np.take(CLASS_NAMES, y[idx])
    fig, axes = grid(3, 3, (4.5, 3.6))
    for ax, name in zip(axes.flat, ["red", "green", "blue"], strict=True):
        sns.histplot(frame, x=name, hue="class", ax=ax, bins=50, stat="density", **_STEPS)
        ax.set(xlabel=f"mean {name} intensity per patch", title=name.capitalize())
    fig.suptitle(f"Per-class channel intensity (n = {len(idx):,} patches)")
    fig.tight_layout()
    return fig


def plot_stain_tools(patch: np.ndarray, sources: Mapping[str, np.ndarray]) -> Figure:
    """``patch``, 4 HED jitters (σ = 0.1) and its Reinhard version; below, 6 patches of each
    of ``sources`` (name → uint8 NHWC), whose patches together give the Reinhard target."""
    patch = np.asarray(patch)
    if patch.shape[-3:] != (96, 96, 3) or patch.dtype != np.uint8:
        raise ValueError(f"patch must be a 96×96×3 uint8 image; got {patch.shape} {patch.dtype}")
    if not sources:
        raise ValueError("give at least one source of patches to compare with")
    target = reinhard_target(np.concatenate([np.asarray(v) for v in sources.values()]))
    jittered = hed_jitter(np.repeat(patch[None], 4, 0), 0.1, np.random.default_rng(0))
    first = [("original", patch), *((f"HED σ=0.1 #{i + 1}", im) for i, im in enumerate(jittered))]
    rows = [[*first, ("Reinhard-normalised", reinhard_normalise(patch[None], *target)[0])]]
    rows += [[(name * (j == 0), im) for j, im in enumerate(v[:6])] for name, v in sources.items()]
    fig, axes = plt.subplots(len(rows), 6, figsize=(1.6 * 6, 1.8 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        for ax, (caption, image) in zip(ax_row, row, strict=False):
            ax.imshow(image)
            ax.set_title(caption, fontsize=8, loc="left")
        for ax in ax_row:
            ax.set_axis_off()
    fig.suptitle("Stain augmentation (HED jitter) and normalisation (Reinhard)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_roc(curves: Mapping[str, tuple]) -> Figure:
    """ROC curves of several models (``{name: (y_true, y_prob)}``), AUC in the legend."""
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict {model name: (y_true, y_prob)}")
    data = {}
    for name, pair in curves.items():  # all checked before drawing, so a bad one is named
        try:
            data[name] = validate_binary(*pair, both=True)
        except (TypeError, ValueError) as err:
            raise ValueError(f"curve {name!r}: {err}") from err
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for k, (name, (yt, yp)) in enumerate(data.items(), 1):
        label = {"label": f"{name} (AUC = {skm.roc_auc_score(yt, yp):.4f})"}
        last = {"plot_chance_level": k == len(data), "chance_level_kw": {"label": "chance"}}
        skm.RocCurveDisplay.from_predictions(yt, yp, ax=ax, curve_kwargs=label, **last)
    ax.set(xlabel="false positive rate (1 - specificity)", title="ROC")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_confusion(y_true, y_prob, threshold: float = 0.5) -> Figure:
    """Confusion matrix at a threshold, with counts and per-true-class percentages."""
    yt, yp = validate_binary(y_true, y_prob)
    cm = skm.confusion_matrix(yt, (yp >= threshold).astype(int), labels=[0, 1])
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # a class with no patches: 0%
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    display = skm.ConfusionMatrixDisplay(frac, display_labels=CLASS_NAMES)
    display.plot(ax=ax, cmap="Blues", colorbar=False, im_kw={"vmin": 0, "vmax": 1})
    for (i, j), text in np.ndenumerate(display.text_):
        text.set_text(f"{cm[i, j]:,}\n{100 * frac[i, j]:.1f}%")
    ax.set_title(f"Confusion matrix (p ≥ {threshold:g} → tumour)")
    return fig


def plot_reliability(y_true, y_prob) -> Figure:
    """Reliability diagram (10 bins, ECE in the title) over bars counting each bin's patches."""
    yt, yp = validate_binary(y_true, y_prob)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    counts = ax.twinx()
    counts.hist(yp, bins=10, range=(0, 1), color="0.85", edgecolor="0.6")
    counts.set_ylabel("patches per bin")
    ax.set_zorder(counts.get_zorder() + 1)  # the curve in front of the bars
    ax.patch.set_visible(False)
    CalibrationDisplay.from_predictions(yt, yp, n_bins=10, ax=ax, name="model")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="predicted tumour probability")
    ece = expected_calibration_error(yt, yp, 10)
    ax.set(ylabel="fraction tumour", title=f"Reliability (ECE = {ece:.4f}, 10 bins)")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def plot_prob_hist(y_true, y_prob) -> Figure:
    """Predicted-probability histograms per true class (log counts, 0.5 marked): the separation."""
    yt, yp = validate_binary(y_true, y_prob)
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.histplot(x=yp, hue=np.take(CLASS_NAMES, yt), bins=np.linspace(0, 1, 51), ax=ax, **_STEPS)
    ax.axvline(0.5, color="k", linestyle="--", linewidth=1)
    ax.set(yscale="log", xlabel="predicted tumour probability", ylabel="patches")
    ax.set_title("Predicted probability by true class")
    return fig


def _render(model) -> Image.Image:
    """visualkeras' layered view of stand-ins with the type, name and ``output_shape`` it reads
    (Keras 3 layers lack it); past MAX_BOXES, one box per stage (``conv2_block1_*`` …)."""
    import visualkeras

    if getattr(model, "inputs", None) is None:
        what = "a subclassed model, or a Sequential model built without keras.Input"
        raise TypeError(f"{type(model).__name__} is not a functional graph ({what})")
    stages = [(None, layer) for layer in model.layers]
    if len(stages) > MAX_BOXES:
        runs = [list(g) for _, g in itertools.groupby(model.layers, lambda x: x.name.split("_")[0])]
        stages = [(run[0].name.split("_")[0] if len(run) > 1 else None, run[-1]) for run in runs]
    classes, views = {}, []  # visualkeras keys legend and colours by type(layer)
    for stem, layer in stages:
        key = stem or type(layer).__name__
        out = layer.output[0] if isinstance(layer.output, list | tuple) else layer.output
        view = classes.setdefault(key, type(key, (types.SimpleNamespace,), {}))
        views.append(view(name=layer.name, output_shape=tuple(out.shape)))  # ints and None
    try:  # DejaVu Sans where installed, else Pillow's built-in font, at a readable size
        font = ImageFont.truetype("DejaVuSans.ttf", 14)
    except OSError:
        font = ImageFont.load_default(size=14)
    view = types.SimpleNamespace(layers=views)  # legend_text_spacing_offset's default warns
    return visualkeras.layered_view(view, legend=True, font=font, legend_text_spacing_offset=0)


def draw_model(model, path=None) -> Image.Image | None:
    """A visualkeras diagram, saved to ``path`` if given; never raises (a warning and None)."""
    try:
        img = _render(model)
        if path is not None:
            fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
            with atomic_path(path) as tmp:  # JPEG and BMP have no alpha channel
                (img.convert("RGB") if fmt in ("JPEG", "BMP") else img).save(tmp, format=fmt)
        return img
    except Exception as exc:  # noqa: BLE001 - by design, see docstring
        what = f"{getattr(model, 'name', type(model).__name__)!r}: {type(exc).__name__}: {exc}"
        warnings.warn(f"draw_model: could not draw {what}", stacklevel=2)
        return None
