"""pcamlib.plots: each chart builds from plain arrays and shows the right content; diagrams."""

import matplotlib

matplotlib.use("Agg")

import os  # noqa: E402
import warnings  # noqa: E402

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from pcamlib import plots  # noqa: E402
from pcamlib.metrics import expected_calibration_error  # noqa: E402
from pcamlib.models import build_model  # noqa: E402

RNG = np.random.default_rng(0)
N = 60
Y = np.array([0, 1] * (N // 2))
P = np.clip(Y * 0.6 + RNG.random(N) * 0.4, 0, 1)
IMAGES = RNG.integers(0, 256, (N, 96, 96, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig):
    out = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    return "\n".join(out)


def _save(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=40)
    assert path.stat().st_size > 1000


def _history(n=6):
    return pd.DataFrame(
        {
            "epoch": range(1, n + 1),
            "loss": np.linspace(0.7, 0.2, n),
            "val_loss": [0.6, 0.5, 0.45, 0.5, 0.55, 0.6][:n],
            "accuracy": np.linspace(0.6, 0.95, n),
            "val_accuracy": np.linspace(0.6, 0.9, n),
            "auc": np.linspace(0.7, 0.99, n),
            "val_auc": [0.7, 0.8, 0.93, 0.91, 0.92, 0.9][:n],
            "learning_rate": [1e-3] * 3 + [1e-4] * (n - 3),
        }
    )


def test_plot_history_frame_panels_and_best_epoch(tmp_path):
    fig = plots.plot_history(_history())
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.axison]
    assert titles == ["Loss", "Accuracy", "ROC AUC", "Learning rate"]
    # Best val AUC is 0.93, in the third row: epoch 3.
    assert "best val AUC 0.9300 @ epoch 3" in _texts(fig)
    auc_ax = fig.axes[2]
    star = [ln for ln in auc_ax.lines if ln.get_marker() == "*"]
    assert len(star) == 1 and star[0].get_xdata()[0] == 3 and star[0].get_ydata()[0] == 0.93
    assert {ln.get_label() for ln in auc_ax.lines} >= {"train", "validation"}
    _save(fig, tmp_path, "history")


def test_plot_history_without_auc_marks_best_val_loss():
    hist = pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.9, 0.5, 0.4], "val_loss": [0.8, 0.3, 0.35]})
    fig = plots.plot_history(hist)
    assert [ax.get_title() for ax in fig.axes if ax.axison] == ["Loss"]
    assert "best val loss 0.3000 @ epoch 2" in _texts(fig)


def test_plot_history_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        plots.plot_history(pd.DataFrame())


def test_plot_label_balance_counts_and_percentages(tmp_path):
    labels = np.array([0] * 30 + [1] * 10)
    fig = plots.plot_label_balance(pd.Series(labels))
    text = _texts(fig)
    assert "30\n(75.0%)" in text and "10\n(25.0%)" in text
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["normal (0)", "tumour (1)"]
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    assert heights == [10, 30]
    _save(fig, tmp_path, "balance")
    with pytest.raises(ValueError, match="row 2"):
        plots.plot_label_balance([0, 1, 3])


def test_plot_roc_several_models(tmp_path):
    other = np.clip(P + RNG.normal(0, 0.3, N), 0, 1)
    curves = {"good": (Y, P), "noisy": (Y, other)}
    fig = plots.plot_roc(curves)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0] == f"good (AUC = {roc_auc_score(Y, P):.4f})"
    assert legend[1].startswith("noisy (AUC = ")
    assert legend[-1] == "chance"
    _save(fig, tmp_path, "roc")
    with pytest.raises(ValueError, match="'bad'.*only class"):
        plots.plot_roc({"bad": ([1, 1], [0.2, 0.3])})
    with pytest.raises(ValueError, match="non-empty dict"):
        plots.plot_roc({})


def test_plot_confusion_counts(tmp_path):
    fig = plots.plot_confusion([0, 0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9, 0.4], threshold=0.5)
    text = _texts(fig)
    assert "2\n66.7%" in text and "1\n33.3%" in text and "1\n50.0%" in text
    _save(fig, tmp_path, "confusion")


def test_plot_reliability_reports_same_ece(tmp_path):
    fig = plots.plot_reliability(Y, P)
    ece = expected_calibration_error(Y, P)
    assert f"ECE = {ece:.4f}" in fig.axes[0].get_title()
    _save(fig, tmp_path, "reliability")


def test_plot_prob_hist_per_class(tmp_path):
    fig = plots.plot_prob_hist(Y, P)
    assert fig.axes[0].get_yscale() == "log"
    text = _texts(fig)
    assert "normal (0)" in text and "tumour (1)" in text
    _save(fig, tmp_path, "probhist")


def test_plot_channel_stats_reads_a_subset(tmp_path, monkeypatch):
    imgs = IMAGES[:20].copy()
    imgs[Y[:20] == 1, ..., 0] = 250  # tumour patches are very red
    monkeypatch.setattr(plots, "MAX_CHANNEL_IMAGES", 16)
    fig = plots.plot_channel_stats(imgs, Y[:20])
    assert [ax.get_title() for ax in fig.axes] == ["Red", "Green", "Blue"]
    assert "n = 16 patches" in _texts(fig)
    _save(fig, tmp_path, "channels")
    with pytest.raises(ValueError, match="labels has 3 rows"):
        plots.plot_channel_stats(imgs, [0, 1, 0])


def test_bad_probabilities_raise_clear_errors():
    with pytest.raises(ValueError, match="row 1"):
        plots.plot_reliability([0, 1], [0.2, 1.4])
    with pytest.raises(ValueError, match="3 rows but y_prob has 2"):
        plots.plot_confusion([0, 1, 1], [0.2, 0.4])


# --------------------------------------------------------------------------- diagrams

L = keras.layers


def _cnn():
    return keras.Sequential(
        [
            keras.Input((96, 96, 3)),
            L.Rescaling(1 / 255),
            L.Resizing(64, 64),
            L.Conv2D(16, 3),
            L.BatchNormalization(),
            L.Activation("relu"),
            L.MaxPooling2D(),
            L.Conv2D(32, 3, activation="relu"),
            L.GlobalAveragePooling2D(),
            L.Dropout(0.3),
            L.Dense(32, activation="relu"),
            L.Dense(1, activation="sigmoid"),
        ]
    )


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(1)

    def call(self, x):
        return self.dense(x)


def _assert_real_image(img):
    assert isinstance(img, Image.Image)
    assert img.width > 100 and img.height > 100
    lo, hi = img.convert("L").getextrema()
    assert lo < hi  # not a blank canvas


@pytest.mark.parametrize("build", [_cnn, lambda: build_model("vgg16", weights=None)])
def test_diagram_renders_quietly_without_mutating_model(build):
    model = build()
    before = {id(la): (set(vars(la)), hasattr(la, "output_shape")) for la in model.layers}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a successful render should be quiet
        img = plots.draw_model(model)
    _assert_real_image(img)
    assert {id(la): (set(vars(la)), hasattr(la, "output_shape")) for la in model.layers} == before


def test_diagram_writes_file_atomically(tmp_path):
    path = tmp_path / "cnn.png"
    img = plots.draw_model(_cnn(), path)
    _assert_real_image(img)
    with Image.open(path) as saved:
        assert saved.size == img.size
    assert os.listdir(tmp_path) == ["cnn.png"]  # no temp file left behind


def test_diagram_jpeg_path_drops_alpha(tmp_path):
    path = tmp_path / "cnn.jpg"
    assert plots.draw_model(_cnn(), str(path)) is not None
    with Image.open(path) as saved:
        assert saved.format == "JPEG"


def test_diagram_of_subclassed_model_warns_and_returns_none():
    m = _Subclassed()
    m(keras.ops.ones((2, 4)))
    with pytest.warns(UserWarning, match="not a functional graph"):
        assert plots.draw_model(m) is None


def test_diagram_write_failure_warns_and_returns_none(tmp_path):
    with pytest.warns(UserWarning, match="could not draw"):
        assert plots.draw_model(_cnn(), tmp_path / "missing" / "x.png") is None


def test_long_models_are_drawn_one_box_per_stage(monkeypatch):
    model = build_model("resnet50", weights=None)  # 175 backbone layers in the model itself
    staged = plots.draw_model(model)
    _assert_real_image(staged)
    monkeypatch.setattr(plots, "MAX_BOXES", 10_000)
    assert plots.draw_model(model).width > 10 * staged.width
