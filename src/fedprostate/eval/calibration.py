"""Temperature scaling (Guo et al., ICML 2017) fitted on validation findings only.

A model's probability p = softmax(z)[1] = sigmoid(z1 − z0); temperature scaling replaces the
logit difference d = logit(p) by d / T, with T > 0 chosen to minimise the negative log-likelihood
of the *validation* headline findings. Ranking (AUROC, AP) is unchanged; calibration (ECE,
Brier) is reported before and after, on validation (where T was fitted: optimistic) and on test
(never used for the fit).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from fedprostate.eval.metrics import expected_calibration_error, headline

EPS = 1e-6
BOUNDS = (0.05, 20.0)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Probabilities with the logit divided by ``temperature``."""
    return 1.0 / (1.0 + np.exp(-_logit(probs) / float(temperature)))


def fit_temperature(labels, probs) -> float:
    """T minimising the NLL of ``labels`` (0/1) under ``apply_temperature(probs, T)``."""
    y = np.asarray(labels, dtype=np.float64)
    d = _logit(probs)
    if len(np.unique(y)) < 2:
        raise ValueError("temperature scaling needs validation findings of both classes")

    def nll(log_t: float) -> float:
        z = d / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    res = minimize_scalar(nll, bounds=tuple(np.log(BOUNDS)), method="bounded")
    return float(np.exp(res.x))


def calibration_report(val_rows: Sequence[dict], test_rows: Sequence[dict]) -> dict | None:
    """T fitted on validation headline rows; ECE before/after on validation and test (None when
    validation has one class or scores are not probabilities)."""
    val, test = headline(val_rows), headline(test_rows)
    vy = np.array([int(r["label"]) for r in val])
    vp = np.array([float(r["score"]) for r in val])
    if len(np.unique(vy)) < 2 or vp.min() < 0 or vp.max() > 1:
        return None
    t = fit_temperature(vy, vp)
    out = {"temperature": t, "fitted_on": "validation headline findings"}
    for name, rows in (("val", val), ("test", test)):
        y = np.array([int(r["label"]) for r in rows])
        p = np.array([float(r["score"]) for r in rows])
        if len(y):
            out[f"{name}_ece_before"] = expected_calibration_error(y, p)
            out[f"{name}_ece_after"] = expected_calibration_error(y, apply_temperature(p, t))
    return out
