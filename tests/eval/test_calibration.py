"""Temperature scaling fitted on validation only; ranking unchanged; test never used."""

import numpy as np
import pytest

from fedprostate.eval.calibration import apply_temperature, calibration_report, fit_temperature
from fedprostate.eval.metrics import auroc


def _overconfident(n, seed, t_true=3.0):
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 2.0, n)  # calibrated logits
    y = (rng.random(n) < 1 / (1 + np.exp(-d))).astype(int)
    return y, 1 / (1 + np.exp(-d * t_true))  # a model whose logits are t_true times too large


def test_fit_recovers_the_temperature_and_keeps_the_ranking():
    y, p = _overconfident(4000, 0)
    t = fit_temperature(y, p)
    assert t == pytest.approx(3.0, rel=0.1)
    assert auroc(y, apply_temperature(p, t)) == pytest.approx(auroc(y, p))


def _rows(y, p, source="reader"):
    return [{"site": "A", "patient_id": str(i), "finding_id": "f", "source": source,
             "label": int(a), "score": float(b)} for i, (a, b) in enumerate(zip(y, p, strict=True))]  # fmt: skip


def test_the_temperature_comes_from_validation_never_from_test():
    vy, vp = _overconfident(800, 1)
    ty, tp = _overconfident(800, 2)
    report = calibration_report(_rows(vy, vp), _rows(ty, tp))
    assert report["val_ece_after"] < report["val_ece_before"]
    assert report["test_ece_after"] < report["test_ece_before"]
    flipped = calibration_report(_rows(vy, vp), _rows(1 - ty, tp))  # test labels changed
    assert flipped["temperature"] == report["temperature"]
    sampled = calibration_report(_rows(vy, vp) + _rows([0] * 50, [0.99] * 50, "sampled"), [])
    assert sampled["temperature"] == report["temperature"]  # sampled tissue is not fitted on
