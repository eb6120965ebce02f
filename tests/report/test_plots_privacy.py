"""The privacy figures: utility vs epsilon (one line per DP level, CI bars, no DP apart) and
cumulative epsilon vs round. The utility plot is checked through its matplotlib objects: the
points, the CI bars and the infinite-epsilon marker are where the data puts them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.image import imread

from fedprostate.report.plots import (
    plot_epsilon_vs_round,
    plot_utility_vs_epsilon,
    utility_vs_epsilon_figure,
)

LEVELS = {
    "client": [(8, 0.60, 0.50, 0.75), (1, 0.55, 0.40, 0.65), (3, 0.58, None, None)],
    "patient": [
        {"epsilon": 1.0, "estimate": 0.70, "low": 0.60, "high": 0.78},
        {"epsilon": math.inf, "estimate": 0.80, "low": 0.72, "high": 0.88},
    ],
}
NO_DP = (0.81, 0.66, 0.91)


def _bars(container: ErrorbarContainer) -> list[tuple[float, float, float]]:
    """(x, low, high) of each vertical CI bar."""
    (cols,) = container.lines[2]
    return [
        (float(s[0, 0]), float(s[:, 1].min()), float(s[:, 1].max())) for s in cols.get_segments()
    ]


def test_utility_vs_epsilon_puts_each_point_and_ci_where_the_data_says():
    fig = utility_vs_epsilon_figure(LEVELS, no_dp=NO_DP)
    ax, inf_ax = fig.axes
    assert ax.get_xscale() == "log"
    lines = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert set(lines) == {"client", "patient"}
    client = lines["client"].lines[0]
    # sorted by epsilon (mutant: drawn in input order, or y of another level -> fails)
    np.testing.assert_allclose(np.asarray(client.get_xdata(), float), [1, 3, 8])
    np.testing.assert_allclose(np.asarray(client.get_ydata(), float), [0.55, 0.58, 0.60])
    bars = _bars(lines["client"])
    np.testing.assert_allclose(bars, [(1, 0.40, 0.65), (3, 0.58, 0.58), (8, 0.50, 0.75)])
    np.testing.assert_allclose(np.asarray(lines["patient"].lines[0].get_xdata(), float), [1.0])
    np.testing.assert_allclose(_bars(lines["patient"]), [(1, 0.60, 0.78)])
    # infinite epsilon: not on the log axis, a marker of its own on the right
    inf_points = sorted(
        (float(c.lines[0].get_ydata()[0]), _bars(c)[0])
        for c in inf_ax.containers
        if isinstance(c, ErrorbarContainer)
    )
    assert inf_points == [(0.80, (0.0, 0.72, 0.88)), (0.81, (0.0, 0.66, 0.91))]
    assert [t.get_text() for t in inf_ax.get_xticklabels()] == ["∞\n(no DP)"]
    low, high = ax.get_ylim()  # every CI inside the axes (the dodged bars do not autoscale)
    assert low <= 0.40 and high >= 0.91
    # the no-DP reference across the finite axis
    assert any(np.allclose(line.get_ydata(), 0.81) for line in ax.get_lines())
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_utility_vs_epsilon_writes_a_png_that_shows_its_data(tmp_path):
    a = imread(plot_utility_vs_epsilon(LEVELS, tmp_path / "a.png", no_dp=NO_DP))
    lower = {
        k: [(e, y - 0.3, lo and lo - 0.3, hi and hi - 0.3) for e, y, lo, hi in v]
        for k, v in [("client", LEVELS["client"])]
    }
    b = imread(plot_utility_vs_epsilon(lower, tmp_path / "b.png", no_dp=NO_DP))
    assert a.shape == b.shape and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="log axis"):
        plot_utility_vs_epsilon({"client": [(0.0, 0.5, None, None)]}, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plot_utility_vs_epsilon({}, tmp_path / "empty.png")


def test_epsilon_vs_round_shows_its_data(tmp_path):
    rising = {"client level": [(r, 0.5 * r) for r in range(1, 6)]}
    faster = {"client level": [(r, 1.5 * r) for r in range(1, 6)]}
    a = imread(plot_epsilon_vs_round(rising, tmp_path / "a.png", budget=4.0))
    again = imread(plot_epsilon_vs_round(rising, tmp_path / "a2.png", budget=4.0))
    b = imread(plot_epsilon_vs_round(faster, tmp_path / "b.png", budget=4.0))
    assert np.array_equal(a, again) and not np.array_equal(a, b)
    beside = plot_epsilon_vs_round(rising, tmp_path / "c.png", auroc=[(1, 0.6), (2, 0.7)])
    assert imread(beside).shape[1] > a.shape[1]  # the validation AUROC panel on its left
