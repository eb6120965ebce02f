"""Every report figure writes a real PNG; the data URI embeds it."""

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
    with pytest.raises(ValueError, match="probabilities"):
        plot_reliability({"logits": (y, 5 * p - 2)}, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plot_roc_curves({}, tmp_path / "empty.png")


def test_per_site_bars(tmp_path, predictions):
    _, _, rows = predictions
    res = evaluate_predictions(rows, n_boot=100)
    path = plot_per_site({"swin": res, "resnet": res["per_site"]}, tmp_path / "sites.png")
    assert _is_png(path)


def test_round_and_pareto_plots(tmp_path):
    histories = {
        "fedavg": [{"round": r, "auroc": 0.6 + 0.02 * r} for r in range(1, 6)],
        "fedadam": [(r, 0.65 + 0.02 * r) for r in range(1, 6)],
    }
    assert _is_png(plot_auroc_vs_round(histories, tmp_path / "rounds.png"))
    arms = {
        "fp32": [(4.0 * r, 0.6 + 0.03 * r) for r in range(1, 6)],
        "int8": [{"cum_mb": 1.0 * r, "auroc": 0.6 + 0.028 * r} for r in range(1, 6)],
    }
    assert _is_png(plot_auroc_vs_mb(arms, tmp_path / "pareto.png"))
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
