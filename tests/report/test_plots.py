"""Every report figure writes a real PNG that shows its data; the data URI embeds it.

A PNG header alone would pass for an empty figure: each test also decodes the image and checks
that different data draws different pixels (mutant: a plot function that draws no data -> the
two images are identical -> fails)."""

import base64

import numpy as np
import pytest

from fedprostate.eval.metrics import evaluate_predictions
from fedprostate.report.plots import (
    pareto_front,
    plot_auroc_vs_mb,
    plot_auroc_vs_round,
    plot_per_site,
    plot_reliability,
    plot_roc_curves,
    png_to_data_uri,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return data.startswith(PNG_MAGIC) and len(data) > 2000


def _pixels(path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(path)


def _shows_data(plot, data, other, tmp_path, name) -> bool:
    """``plot`` draws ``data`` and ``other`` differently, and the same data the same way."""
    a = _pixels(plot(data, tmp_path / f"{name}_a.png"))
    again = _pixels(plot(data, tmp_path / f"{name}_a2.png"))
    b = _pixels(plot(other, tmp_path / f"{name}_b.png"))
    return np.array_equal(a, again) and a.shape == b.shape and not np.array_equal(a, b)


@pytest.fixture(scope="module")
def predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = 1 / (1 + np.exp(-(rng.normal(size=200) + 2 * y - 1)))
    rows = [
        {"site": f"S{i % 3}", "patient_id": str(i // 2), "finding_id": f"f{i}",
         "source": "reader", "label": int(a), "score": float(b)}
        for i, (a, b) in enumerate(zip(y, p, strict=True))
    ]  # fmt: skip
    return y, p, rows


def test_roc_and_reliability(tmp_path, predictions):
    y, p, rows = predictions
    roc = plot_roc_curves(
        {"model": (y, p), "rows": rows, "flipped": (y, 1 - p)}, tmp_path / "roc.png"
    )
    rel = plot_reliability({"model": (y, p), "sharpened": (y, p**3)}, tmp_path / "sub" / "rel.png")
    assert _is_png(roc) and _is_png(rel)
    assert _shows_data(plot_roc_curves, {"m": (y, p)}, {"m": (y, p**0.2 + 0.3 * y)}, tmp_path, "r")
    assert _shows_data(plot_reliability, {"m": (y, p)}, {"m": (y, p**3)}, tmp_path, "rel")
    with pytest.raises(ValueError, match="probabilities"):
        plot_reliability({"logits": (y, 5 * p - 2)}, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plot_roc_curves({}, tmp_path / "empty.png")


def test_per_site_bars(tmp_path, predictions):
    _, _, rows = predictions
    res = evaluate_predictions(rows, n_boot=100)
    path = plot_per_site({"swin": res, "resnet": res["per_site"]}, tmp_path / "sites.png")
    assert _is_png(path)
    flipped = evaluate_predictions([dict(r, score=1 - r["score"]) for r in rows], n_boot=100)
    assert _shows_data(plot_per_site, {"swin": res}, {"swin": flipped}, tmp_path, "s")


def test_round_and_pareto_plots(tmp_path):
    histories = {
        "fedavg": [{"round": r, "auroc": 0.6 + 0.02 * r} for r in range(1, 6)],
        "fedadam": [(r, 0.65 + 0.02 * r) for r in range(1, 6)],
    }
    assert _is_png(plot_auroc_vs_round(histories, tmp_path / "rounds.png"))
    falling = {"fedavg": [(r, 0.9 - 0.05 * r) for r in range(1, 6)]}
    rising = {"fedavg": [(r, 0.6 + 0.05 * r) for r in range(1, 6)]}
    assert _shows_data(plot_auroc_vs_round, rising, falling, tmp_path, "rounds")
    arms = {
        "fp32": [(4.0 * r, 0.6 + 0.03 * r) for r in range(1, 6)],
        "int8": [{"cum_mb": 1.0 * r, "auroc": 0.6 + 0.028 * r} for r in range(1, 6)],
    }
    assert _is_png(plot_auroc_vs_mb(arms, tmp_path / "pareto.png"))
    cheaper = {"fp32": [(0.1 * r, 0.6 + 0.03 * r) for r in range(1, 6)]}
    assert _shows_data(plot_auroc_vs_mb, {"fp32": arms["fp32"]}, cheaper, tmp_path, "mb")
    with pytest.raises(ValueError, match="MB"):
        plot_auroc_vs_mb({"bad": [(0.0, 0.5)]}, tmp_path / "bad.png")


def test_pareto_front_keeps_undominated_points():
    points = [(20.0, 0.75), (5.0, 0.74), (10.0, 0.70), (1.0, 0.60), (30.0, 0.74)]
    assert pareto_front(points) == [(1.0, 0.60), (5.0, 0.74), (20.0, 0.75)]


def test_png_to_data_uri(tmp_path, predictions):
    y, p, _ = predictions
    path = plot_roc_curves({"m": (y, p)}, tmp_path / "roc.png")
    uri = png_to_data_uri(path)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == path.read_bytes()
    text = tmp_path / "x.png"
    text.write_text("not an image", encoding="utf-8")
    with pytest.raises(ValueError):
        png_to_data_uri(text)


def test_a_site_without_a_value_is_marked_not_left_blank(tmp_path, monkeypatch):
    """The demo's per-site plot had an empty slot for a site whose test findings were one class."""
    from matplotlib.axes import Axes

    texts, real = [], Axes.text
    monkeypatch.setattr(
        Axes, "text", lambda ax, x, y, s, *a, **k: texts.append(s) or real(ax, x, y, s, *a, **k)
    )
    per_site = {"S0": {"auroc": {"estimate": 0.8, "low": 0.7, "high": 0.9}}, "S1": {"auroc": {}}}
    assert _is_png(plot_per_site({"m": per_site}, tmp_path / "s.png"))
    assert texts == ["n/a"]
