"""DeLong (fast midrank) against hand and brute-force computations; paired bootstrap; verdicts."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from fedprostate.eval.compare import (
    compare_models,
    delong_ci,
    delong_components,
    delong_test,
    noninferior,
    paired_bootstrap,
    verdict,
    verdict_from_comparison,
)
from fedprostate.records.predictions import PredictionsError

# Three positives then three negatives; the same six findings scored by two models.
LABELS = np.array([1, 1, 1, 0, 0, 0])
MODEL_A = np.array([0.9, 0.6, 0.4, 0.5, 0.4, 0.2])
MODEL_B = np.array([0.8, 0.05, 0.7, 0.6, 0.1, 0.3])


def test_delong_hand_computed_case():
    # psi(X_i, Y_j) written out by hand (rows: positives, columns: negatives).
    # A: 0.9 and 0.6 beat all of (0.5, 0.4, 0.2); 0.4 loses to 0.5, ties 0.4, beats 0.2.
    # B: 0.8 and 0.7 beat all of (0.6, 0.1, 0.3); 0.05 loses to all.
    # AUC_A = 7.5 / 9 = 5/6, AUC_B = 6 / 9 = 2/3.
    # V10_A = (1, 1, 1/2), V01_A = (2/3, 5/6, 1); V10_B = (1, 0, 1), V01_B = (2/3, 2/3, 2/3).
    # S10: AA = 1/12, BB = 1/3, AB = -1/12.  S01: AA = 1/36, BB = 0, AB = 0.
    # var_A = (1/12)/3 + (1/36)/3 = 1/27; var_B = (1/3)/3 = 1/9; cov = (-1/12)/3 = -1/36.
    # var(B - A) = 1/27 + 1/9 + 2/36 = 11/54; z = (2/3 - 5/6) / sqrt(11/54).
    aucs, v10, v01 = delong_components(LABELS, np.vstack([MODEL_A, MODEL_B]))
    np.testing.assert_allclose(aucs, [5 / 6, 2 / 3])
    np.testing.assert_allclose(v10, [[1, 1, 0.5], [1, 0, 1]])
    np.testing.assert_allclose(v01, [[2 / 3, 5 / 6, 1], [2 / 3, 2 / 3, 2 / 3]])
    res = delong_test(LABELS, MODEL_A, MODEL_B)
    assert res["var_a"] == pytest.approx(1 / 27)
    assert res["var_b"] == pytest.approx(1 / 9)
    assert res["cov_ab"] == pytest.approx(-1 / 36)
    z = (2 / 3 - 5 / 6) / math.sqrt(11 / 54)
    assert res["delta"] == pytest.approx(-1 / 6)
    assert res["z"] == pytest.approx(z)
    assert res["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)))


def _brute_force_variance(y, s):
    pos, neg = s[y == 1], s[y == 0]
    psi = np.array([[1.0 if x > v else 0.5 if x == v else 0.0 for v in neg] for x in pos])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)


def test_delong_single_variance_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(10):
        n = int(rng.integers(10, 80))
        y = np.r_[1, 1, 0, 0, rng.integers(0, 2, n)]
        s = np.round(rng.normal(size=len(y)) + y, 1)  # with ties
        auc, var = _brute_force_variance(y, s)
        res = delong_ci(y, s)
        assert res["auroc"] == pytest.approx(auc) == pytest.approx(roc_auc_score(y, s))
        assert res["variance"] == pytest.approx(var)


def test_delong_null_type_one_error_and_ci_coverage():
    """Two different models of equal true AUROC: ~5 % rejections; single-AUROC CI covers ~95 %."""
    rng = np.random.default_rng(1)
    true_auc = stats.norm.cdf(1 / math.sqrt(2))
    rejections, covered = 0, 0
    for _ in range(300):
        y = np.r_[np.ones(60), np.zeros(60)]
        latent = rng.normal(size=120)
        a = latent + rng.normal(size=120) + math.sqrt(2) * y
        b = latent + rng.normal(size=120) + math.sqrt(2) * y
        rejections += delong_test(y, a, b)["p_value"] < 0.05
        ci = delong_ci(y, a)
        covered += ci["low"] <= true_auc <= ci["high"]
    assert 0.01 <= rejections / 300 <= 0.10
    assert 0.90 <= covered / 300 <= 0.99


def test_paired_bootstrap_p_values():
    rng = np.random.default_rng(2)
    n = 200
    y = rng.integers(0, 2, n)
    weak = rng.normal(size=n) + 0.3 * y
    strong = weak + 2.0 * y
    patients = np.arange(n) // 2
    better = paired_bootstrap(y, weak, strong, patients, n_boot=1000, seed=0)
    assert better["delta"] > 0.2 and better["low"] > 0
    assert better["p_value"] < 0.01
    same = paired_bootstrap(y, weak, weak.copy(), patients, n_boot=1000, seed=0)
    assert same["delta"] == 0 and same["p_value"] == 1.0
    noisy = paired_bootstrap(y, weak, weak + rng.normal(scale=0.05, size=n), patients, n_boot=1000)
    assert noisy["p_value"] > 0.05


def _rows(y, s, patients):
    return [
        {
            "site": "S",
            "patient_id": str(p),
            "finding_id": f"f{i}",
            "source": "reader",
            "label": int(a),
            "score": float(b),
        }
        for i, (a, b, p) in enumerate(zip(y, s, patients, strict=True))
    ]


def test_compare_models_matches_rows_and_checks_them():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    a, b = rng.normal(size=120) + y, rng.normal(size=120) + 2 * y
    pats = np.arange(120) // 3
    rows_a, rows_b = _rows(y, a, pats), _rows(y, b, pats)
    res = compare_models(rows_a, list(reversed(rows_b)), n_boot=300)
    assert res["bootstrap"]["delta"] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a))
    assert res["delong"]["delta"] == pytest.approx(res["bootstrap"]["delta"])
    assert res["n_patients"] == 40
    assert verdict_from_comparison(res, claim="superior", alpha=0.05, margin=0.0) == "reproduced"
    with pytest.raises(ValueError, match="alpha"):
        verdict_from_comparison(res, claim="superior", alpha=0.10, margin=0.0)
    with pytest.raises(PredictionsError, match="only one"):
        compare_models(rows_a, rows_b[1:])
    rows_b[0]["label"] = 1 - rows_b[0]["label"]
    with pytest.raises(PredictionsError, match="different labels"):
        compare_models(rows_a, rows_b)


def test_noninferiority_and_verdict_rules():
    assert noninferior(-0.01, 0.02) and not noninferior(-0.03, 0.02)
    with pytest.raises(ValueError):
        noninferior(0.0, -0.1)
    # superiority: CI above 0 -> reproduced; below 0 -> not; straddling -> inconclusive
    assert verdict(0.01, 0.09, claim="superior") == "reproduced"
    assert verdict(-0.09, -0.01, claim="superior") == "not reproduced"
    assert verdict(-0.01, 0.05, claim="superior") == "inconclusive"
    # with a smallest gain of interest, a CI entirely below it means not reproduced
    assert verdict(-0.01, 0.015, claim="superior", margin=0.02) == "not reproduced"
    # non-inferiority with margin 0.02
    assert verdict(-0.015, 0.005, claim="noninferior", margin=0.02) == "reproduced"
    assert verdict(-0.09, -0.03, claim="noninferior", margin=0.02) == "not reproduced"
    assert verdict(-0.04, 0.02, claim="noninferior", margin=0.02) == "inconclusive"
    assert verdict(None, None, claim="noninferior", margin=0.02) == "inconclusive"
    with pytest.raises(ValueError):
        verdict(0.1, -0.1)
    with pytest.raises(ValueError):
        verdict(-0.1, 0.1, claim="better")
