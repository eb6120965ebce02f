"""Paired comparison of two models scored on the same test findings, and claim verdicts.

Two tests are offered:
- ``paired_bootstrap``: resamples *patients* (all their findings), applies the same resample to
  both models, and reports the percentile CI and a two-sided p-value of delta AUROC = B - A.
  It respects the clustering of findings within patients: this is the primary test.
- ``delong_test``: DeLong, DeLong & Clarke-Pearson (1988) for two correlated AUROCs, computed
  with the fast midrank algorithm (Sun & Xu 2014). It treats findings as independent, so with
  several findings per patient it is anti-conservative; report it as secondary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from fedprostate.eval.bootstrap import bootstrap_statistic, percentile_ci, weighted_auroc
from fedprostate.eval.metrics import check_rows, patient_key
from fedprostate.records import predictions
from fedprostate.records.predictions import PredictionsError

VERDICTS = ("reproduced", "not reproduced", "inconclusive")
CLAIMS = ("superior", "noninferior")


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def delong_components(labels, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Structural components of K models' AUROCs.

    ``scores`` is [K, n] (or [n]). Returns (aucs [K], V10 [K, m], V01 [K, k]) where m = number of
    positives, k = number of negatives, V10_i = mean_j psi(X_i, Y_j) over negatives j and
    V01_j = mean_i psi(X_i, Y_j) over positives i, psi(x, y) = 1 if x > y, 1/2 if x = y, else 0.
    """
    y = np.asarray(labels).astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    m, k = int(y.sum()), int((~y).sum())
    if m == 0 or k == 0:
        raise ValueError("DeLong needs at least one positive and one negative finding")
    aucs, v10, v01 = [], [], []
    for row in s:
        pos, neg = row[y], row[~y]
        combined = _midranks(np.concatenate([pos, neg]))
        rank_in_pos, rank_in_neg = _midranks(pos), _midranks(neg)
        aucs.append((combined[:m].sum() - m * (m + 1) / 2) / (m * k))
        v10.append((combined[:m] - rank_in_pos) / k)  # negatives below each positive (ties 1/2)
        v01.append(1.0 - (combined[m:] - rank_in_neg) / m)  # positives above each negative
    return np.array(aucs), np.array(v10), np.array(v01)


def delong_covariance(labels, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(aucs [K], covariance [K, K]) = S10 / m + S01 / k (sample covariances, ddof=1)."""
    aucs, v10, v01 = delong_components(labels, scores)
    m, k = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(aucs), len(aucs)))
    s01 = np.atleast_2d(np.cov(v01)) if k > 1 else np.zeros((len(aucs), len(aucs)))
    return aucs, s10 / m + s01 / k


def delong_ci(labels, scores, level: float = 0.95) -> dict:
    """AUROC of one model, its DeLong variance and normal-approximation CI (clipped to [0, 1])."""
    aucs, cov = delong_covariance(labels, np.asarray(scores, dtype=float)[None, :])
    se = float(np.sqrt(cov[0, 0]))
    half = float(stats.norm.ppf(0.5 + level / 2)) * se
    auc = float(aucs[0])
    return {
        "auroc": auc,
        "variance": float(cov[0, 0]),
        "low": max(0.0, auc - half),
        "high": min(1.0, auc + half),
    }


def delong_test(labels, scores_a, scores_b, level: float = 0.95) -> dict:
    """DeLong test of H0: AUROC_A == AUROC_B on the same findings. delta = B - A."""
    aucs, cov = delong_covariance(labels, np.vstack([scores_a, scores_b]).astype(float))
    delta = float(aucs[1] - aucs[0])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se > 0:
        z = delta / se
    else:  # identical rankings (delta 0) or a degenerate perfect case
        z = 0.0 if delta == 0 else float(np.copysign(np.inf, delta))
    half = float(stats.norm.ppf(0.5 + level / 2)) * se
    return {
        "auroc_a": float(aucs[0]),
        "auroc_b": float(aucs[1]),
        "delta": delta,
        "var_a": float(cov[0, 0]),
        "var_b": float(cov[1, 1]),
        "cov_ab": float(cov[0, 1]),
        "se": se,
        "z": float(z),
        "p_value": float(2 * stats.norm.sf(abs(z))),
        "low": delta - half,
        "high": delta + half,
    }


def paired_bootstrap(
    labels,
    scores_a,
    scores_b,
    patient_ids: Sequence,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Paired patient bootstrap of delta AUROC = B - A.

    p-value (two-sided, percentile): 2 * min(#{delta* <= 0} + 1, #{delta* >= 0} + 1) / (B + 1),
    capped at 1, over valid resamples B; it is < alpha exactly when the (1 - alpha) percentile
    interval lies on one side of 0 (up to the +1 correction).
    """
    y = np.asarray(labels).astype(int)
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if not (len(y) == len(a) == len(b) == len(patient_ids)):
        raise ValueError("labels, both score vectors and patient_ids must have equal length")

    def kernel(w):
        return weighted_auroc(y, b, w) - weighted_auroc(y, a, w)

    ones = np.ones((1, len(y)))
    delta = float(kernel(ones)[0])
    samples = bootstrap_statistic(patient_ids, kernel, n_boot=n_boot, seed=seed)
    valid = samples[np.isfinite(samples)]
    low, high = percentile_ci(valid, level)
    if len(valid):
        tail = min((valid <= 0).sum(), (valid >= 0).sum())
        p_value = float(min(1.0, 2 * (tail + 1) / (len(valid) + 1)))
    else:
        p_value = None
    return {
        "auroc_a": float(weighted_auroc(y, a, ones)[0]),
        "auroc_b": float(weighted_auroc(y, b, ones)[0]),
        "delta": delta,
        "low": low,
        "high": high,
        "p_value": p_value,
        "n_valid": int(len(valid)),
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
    }


def match_predictions(rows_a: Sequence[dict], rows_b: Sequence[dict]) -> tuple:
    """Align two models' rows on (site, patient, finding). Returns labels, a, b, patient keys."""
    check_rows(rows_a, "model A predictions")
    check_rows(rows_b, "model B predictions")

    def keyed(rows, name):
        out = {}
        for r in rows:
            key = (patient_key(r), predictions.finding_key(r))
            if key in out:
                raise PredictionsError.of(
                    str(r["patient_id"]), f"{name}: finding {key[1]} appears twice"
                )
            out[key] = r
        return out

    a, b = keyed(rows_a, "model A"), keyed(rows_b, "model B")
    if a.keys() != b.keys():
        diff = sorted(a.keys() ^ b.keys())[0]
        raise PredictionsError.of(
            diff[0], f"finding {diff[1]} is scored by only one of the two models"
        )
    keys = sorted(a)
    for key in keys:
        if int(a[key]["label"]) != int(b[key]["label"]):
            raise PredictionsError.of(
                key[0], f"finding {key[1]} has different labels in the two models"
            )
    labels = np.array([int(a[k]["label"]) for k in keys])
    return (
        labels,
        np.array([float(a[k]["score"]) for k in keys]),
        np.array([float(b[k]["score"]) for k in keys]),
        [k[0] for k in keys],
    )


def compare_models(rows_a, rows_b, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap (primary) and DeLong (secondary) for delta AUROC = B - A."""
    labels, a, b, pids = match_predictions(rows_a, rows_b)
    return {
        "bootstrap": paired_bootstrap(labels, a, b, pids, n_boot=n_boot, seed=seed, level=level),
        "delong": delong_test(labels, a, b, level=level),
        "n_findings": len(labels),
        "n_patients": len(set(pids)),
    }


def noninferior(delta_ci_low: float, margin: float) -> bool:
    """B is non-inferior to A when the CI lower bound of delta = B - A exceeds -margin."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (an AUROC loss), got {margin}")
    return delta_ci_low is not None and delta_ci_low > -margin


def verdict(
    delta: float,
    ci_low: float | None,
    ci_high: float | None,
    p_value: float | None,
    *,
    claim: str = "superior",
    alpha: float = 0.05,
    margin: float = 0.0,
) -> str:
    """Verdict on a published claim about delta = B - A (B is the arm the claim favours).

    The CI must be the two-sided (1 - alpha) interval, both pre-registered with ``margin`` >= 0.
    - claim "superior" (B better than A):
        reproduced     if p_value < alpha and ci_low > 0;
        not reproduced if ci_high < margin (any gain is below the smallest gain of interest;
                       with margin 0: B is significantly worse);
        else inconclusive.
    - claim "noninferior" (B not worse than A by more than margin):
        reproduced     if ci_low > -margin;
        not reproduced if ci_high < -margin (B worse by more than the margin);
        else inconclusive.
    Missing CI bounds (e.g. too few cases) give "inconclusive".
    """
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; expected one of {CLAIMS}")
    if not 0 < alpha < 1 or margin < 0:
        raise ValueError(f"need 0 < alpha < 1 and margin >= 0, got alpha={alpha}, margin={margin}")
    if ci_low is None or ci_high is None or delta is None:
        return "inconclusive"
    if ci_low > ci_high:
        raise ValueError(f"CI low {ci_low} above CI high {ci_high}")
    if claim == "superior":
        if p_value is not None and p_value < alpha and ci_low > 0:
            return "reproduced"
        return "not reproduced" if ci_high < margin else "inconclusive"
    if noninferior(ci_low, margin):
        return "reproduced"
    return "not reproduced" if ci_high < -margin else "inconclusive"


def verdict_from_comparison(comparison: dict, *, claim: str, alpha: float, margin: float) -> str:
    """Verdict from ``compare_models`` output, using the paired patient bootstrap (primary test)."""
    boot = comparison["bootstrap"] if "bootstrap" in comparison else comparison
    if abs(boot["level"] - (1 - alpha)) > 1e-9:
        raise ValueError(
            f"CI level {boot['level']} does not match the pre-registered alpha {alpha}"
        )
    return verdict(
        boot["delta"],
        boot["low"],
        boot["high"],
        boot["p_value"],
        claim=claim,
        alpha=alpha,
        margin=margin,
    )
