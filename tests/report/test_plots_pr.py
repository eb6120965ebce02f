"""The precision-recall figure beside the ROC: sklearn's curve, AP in the legend, chance level."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve

from fedprostate.report import plots


@pytest.fixture()
def drawn(monkeypatch):
    """The figure each plot function builds, kept open for inspection."""
    figures = []

    def keep(fig, path):
        figures.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield figures
    for fig in figures:
        plots.plt.close(fig)


def test_pr_curve_is_sklearns_with_ap_and_chance_level(drawn, tmp_path):
    rng = np.random.default_rng(1)
    y = (rng.random(120) < 0.25).astype(int)
    s = rng.normal(size=120) + 1.5 * y
    rows = [{"label": int(a), "score": float(b)} for a, b in zip(y, s, strict=True)]
    plots.plot_pr_curves({"model": rows, "inverted": (y, -s)}, tmp_path / "pr.png")
    ax = drawn[0].axes[0]
    curve, inverted, chance = ax.get_lines()
    precision, recall, _ = precision_recall_curve(y, s)
    assert np.allclose(curve.get_xdata(), recall) and np.allclose(curve.get_ydata(), precision)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == f"model (AP {average_precision_score(y, s):.3f})"
    assert labels[1] == f"inverted (AP {average_precision_score(y, -s):.3f})"
    assert np.allclose(chance.get_ydata(), y.mean())
    assert ax.get_xlabel().startswith("recall") and ax.get_ylabel().startswith("precision")


def test_pr_curve_refuses_one_class_and_nothing(tmp_path):
    with pytest.raises(ValueError, match="both classes"):
        plots.plot_pr_curves({"m": (np.zeros(5), np.arange(5.0))}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.plot_pr_curves({}, tmp_path / "x.png")


def test_pr_curve_writes_a_png(tmp_path):
    path = plots.plot_pr_curves({"m": ([0, 1, 1, 0], [0.1, 0.8, 0.6, 0.4])}, tmp_path / "pr.png")
    assert path.read_bytes().startswith(b"\x89PNG")
