"""Tests for pcamlib.plots: each figure builds from plain arrays, shows the right content, saves."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from pcamlib import plots  # noqa: E402
from pcamlib.metrics import expected_calibration_error  # noqa: E402

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


def test_plot_label_balance_draws_on_given_axes():
    fig, (a, b) = plt.subplots(1, 2)
    assert plots.plot_label_balance(Y, ax=b) is fig
    assert len(b.patches) == 2 and len(a.patches) == 0


def test_plot_patch_grid_boxes_and_captions(tmp_path):
    fig = plots.plot_patch_grid(IMAGES, labels=Y, probs=P, n=12, ncols=5, title="grid")
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 12
    boxes = [p for p in image_axes[0].patches if isinstance(p, Rectangle)]
    assert len(boxes) == 1
    # Pixels 32..63 of a 96 px patch; imshow pixel i spans [i - 0.5, i + 0.5].
    assert boxes[0].get_xy() == (31.5, 31.5)
    assert boxes[0].get_width() == 32 and boxes[0].get_height() == 32
    title = image_axes[1].get_title()
    assert title == f"y=1 p={P[1]:.2f}"
    correct = (P[1] >= 0.5) == Y[1]
    assert matplotlib.colors.to_hex(image_axes[1].title.get_color()) == (
        "#008000" if correct else "#ff0000"
    )
    _save(fig, tmp_path, "grid")
    no_box = plots.plot_patch_grid(IMAGES, n=3, centre_box=False)
    assert not any(ax.patches for ax in no_box.axes)
    with pytest.raises(ValueError, match="labels has 3 rows"):
        plots.plot_patch_grid(IMAGES, labels=[0, 1, 0])


def test_plot_roc_and_pr_several_models(tmp_path):
    other = np.clip(P + RNG.normal(0, 0.3, N), 0, 1)
    curves = {"good": (Y, P), "noisy": (Y, other)}
    fig = plots.plot_roc(curves)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0] == f"good (AUC = {roc_auc_score(Y, P):.4f})"
    assert legend[1].startswith("noisy (AUC = ")
    _save(fig, tmp_path, "roc")
    fig = plots.plot_pr(curves)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0].startswith("good (AP = ") and "prevalence 0.50" in legend[-1]
    with pytest.raises(ValueError, match="'bad'.*only class"):
        plots.plot_roc({"bad": ([1, 1], [0.2, 0.3])})
    with pytest.raises(ValueError, match="non-empty dict"):
        plots.plot_pr({})


def test_plot_confusion_counts(tmp_path):
    fig = plots.plot_confusion([0, 0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9, 0.4], threshold=0.5)
    text = _texts(fig)
    assert "2\n66.7%" in text and "1\n33.3%" in text and "1\n50.0%" in text
    _save(fig, tmp_path, "confusion")


def test_plot_reliability_reports_same_ece(tmp_path):
    fig = plots.plot_reliability(Y, P, n_bins=10)
    ece = expected_calibration_error(Y, P)
    assert f"ECE = {ece:.4f}" in fig.axes[0].get_title()
    _save(fig, tmp_path, "reliability")


def test_plot_prob_hist_per_class(tmp_path):
    fig = plots.plot_prob_hist(Y, P)
    text = _texts(fig)
    assert "normal (0)" in text and "tumour (1)" in text
    _save(fig, tmp_path, "probhist")


def test_plot_confident_errors_picks_most_confident(tmp_path):
    y = np.array([0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.9, 0.6, 0.1, 0.05, 0.3, 0.9, 0.99])
    fig = plots.plot_confident_errors(IMAGES[:7], y, p, n=2, ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    # FPs by descending p: #6 (0.99), #0 (0.9); FNs by ascending p: #3 (0.05), #4 (0.3).
    assert titles == ["#6 p=0.990", "#0 p=0.900", "#3 p=0.050", "#4 p=0.300"]
    assert "showing 2 of 3" in _texts(fig) and "showing 2 of 2" in _texts(fig)
    _save(fig, tmp_path, "errors")
    none = plots.plot_confident_errors(IMAGES[:2], [0, 1], [0.1, 0.9], n=4)
    assert "none" in _texts(none)


def test_plot_confident_errors_counts_errors_at_the_given_threshold():
    y = np.array([0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.9, 0.6, 0.1, 0.05, 0.3, 0.9, 0.99])
    fig = plots.plot_confident_errors(IMAGES[:7], y, p, n=3, ncols=3, threshold=0.95)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    # At 0.95 only #6 (0.99) is a false positive; every tumour patch (#3, #4, #5) is missed.
    assert titles == ["#6 p=0.990", "#3 p=0.050", "#4 p=0.300", "#5 p=0.900"]
    assert "p ≥ 0.95" in _texts(fig) and "showing 1 of 1" in _texts(fig)


def test_plot_channel_stats(tmp_path):
    imgs = IMAGES[:20].copy()
    imgs[Y[:20] == 1, ..., 0] = 250  # tumour patches are very red
    fig = plots.plot_channel_stats(imgs, Y[:20], max_images=16)
    assert [ax.get_title() for ax in fig.axes] == ["Red", "Green", "Blue"]
    assert "n = 16 patches" in _texts(fig)
    _save(fig, tmp_path, "channels")
    with pytest.raises(ValueError, match="labels has 3 rows"):
        plots.plot_channel_stats(imgs, [0, 1, 0])


def test_plot_gradcam_overlay(tmp_path):
    heat = np.zeros((3, 96, 96), np.float32)
    heat[:, 40:60, 40:60] = 1.0
    fig = plots.plot_gradcam(IMAGES[:3], heat, probs=[0.1, 0.5, 0.9], labels=[0, 1, 1])
    overlay = [ax for ax in fig.axes if len(ax.images) == 2]
    assert len(overlay) == 3 and overlay[0].images[1].get_alpha() == 0.4
    assert all(any(isinstance(p, Rectangle) for p in ax.patches) for ax in overlay)
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "colorbar"]  # one scale for all
    assert bar.get_ylim() == (0.0, 1.0)
    _save(fig, tmp_path, "gradcam")
    with pytest.raises(ValueError, match="do not match"):
        plots.plot_gradcam(IMAGES[:3], heat[:, :50])


def test_bad_probabilities_raise_clear_errors():
    with pytest.raises(ValueError, match="row 1"):
        plots.plot_reliability([0, 1], [0.2, 1.4])
    with pytest.raises(ValueError, match="3 rows but y_prob has 2"):
        plots.plot_confusion([0, 1, 1], [0.2, 0.4])
