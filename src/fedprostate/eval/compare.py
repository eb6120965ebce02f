"""Paired comparison of two models scored on the same test findings.

Two tests are offered:
- ``paired_bootstrap``: resamples *patients* (all their findings), applies the same resample to
  both models, and reports the percentile CI and p-values of Δ AUROC = B − A; with several
  training seeds per model it also resamples each model's seeds (crossed patient × seed
  bootstrap). It respects the clustering of findings within patients: this is the primary test.
- ``delong_test``: DeLong, DeLong & Clarke-Pearson (1988) for two correlated AUROCs, computed
  with the fast midrank algorithm (Sun & Xu 2014). It treats findings as independent, so with
  several findings per patient it is anti-conservative; report it as secondary.

What a comparison may conclude (thresholds, zero-variance, Holm, minimum test size) is
``fedprostate.eval.verdicts``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from fedprostate.eval.bootstrap import (
    bootstrap_statistic,
    percentile_ci,
    seed_means,
    weighted_auroc,
)
from fedprostate.eval.metrics import check_rows, patient_key
from fedprostate.eval.verdicts import (  # noqa: F401 (verdict rules live in eval.verdicts)
    CLAIMS,
    VERDICTS,
    bootstrap_p,
    noninferior,
    verdict,
    verdict_from_comparison,
    zero_variance,
)
from fedprostate.records import predictions
from fedprostate.records.predictions import PredictionsError


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
    threshold: float = 0.0,
) -> dict:
    """Paired bootstrap of Δ AUROC = B − A over patients, and over seeds when given several.

    ``scores_a``/``scores_b`` are [n] (one training run) or [S, n] (one row per training seed).
    Each resample draws *patients* with replacement (all their findings; the same draw for both
    arms: paired) and, independently per arm, that arm's seeds with replacement (crossed
    patient × seed bootstrap); Δ* = mean over the drawn seeds of B − mean over those of A. With
    one seed per arm this is the plain paired patient bootstrap. The estimate is the difference
    of the seed-mean AUROCs.

    p_value (two-sided, at 0): 2 · min(#{Δ* ≤ 0} + 1, #{Δ* ≥ 0} + 1) / (B + 1), capped at 1;
    p_for / p_against at ``threshold`` (``eval.verdicts.bootstrap_p``); ``flat`` marks a
    zero-variance bootstrap (no verdict can rest on it).
    """
    y = np.asarray(labels).astype(int)
    a = np.atleast_2d(np.asarray(scores_a, dtype=float))
    b = np.atleast_2d(np.asarray(scores_b, dtype=float))
    if not (len(y) == a.shape[1] == b.shape[1] == len(patient_ids)):
        raise ValueError("labels, both score vectors and patient_ids must have equal length")
    sa = len(a)
    rows = np.vstack([a, b])

    def kernel(w):  # [k, n] weights -> [k, Sa + Sb] AUROCs
        return np.stack([weighted_auroc(y, s, w) for s in rows], axis=1)

    full = kernel(np.ones((1, len(y))))[0]
    per_seed = bootstrap_statistic(patient_ids, kernel, n_boot=n_boot, seed=seed)
    samples = seed_resample(per_seed, sa, seed)
    valid = samples[np.isfinite(samples)]
    low, high = percentile_ci(valid, level)
    p_value = bootstrap_p(valid, 0.0)
    p_for, p_against = bootstrap_p(valid, threshold)
    return {
        "auroc_a": float(full[:sa].mean()),
        "auroc_b": float(full[sa:].mean()),
        "auroc_a_seeds": [float(x) for x in full[:sa]],
        "auroc_b_seeds": [float(x) for x in full[sa:]],
        "delta": float(full[sa:].mean() - full[:sa].mean()),
        "low": low,
        "high": high,
        "sd": float(valid.std(ddof=1)) if len(valid) > 1 else None,
        "p_value": None if p_value[0] is None else min(p_value),
        "threshold": threshold,
        "p_for": p_for,
        "p_against": p_against,
        "flat": zero_variance(valid),
        "n_valid": int(len(valid)),
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "seeds_a": sa,
        "seeds_b": len(b),
    }


def seed_resample(per_seed: np.ndarray, n_a: int, seed: int) -> np.ndarray:
    """Δ* per resample from [B, Sa + Sb] per-seed AUROCs: each arm's seeds drawn with
    replacement (independently), B's mean minus A's mean. One seed each: the plain difference."""
    rng = np.random.default_rng([seed, 1])
    mean_a = seed_means(per_seed[:, :n_a], rng)
    return seed_means(per_seed[:, n_a:], rng) - mean_a


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


def match_seeded(seeds_a: Sequence[Sequence[dict]], seeds_b: Sequence[Sequence[dict]]) -> tuple:
    """Align several training seeds of two models on (site, patient, finding).

    Every seed of both models must score the same findings with the same labels. Returns
    labels [n], A scores [Sa, n], B scores [Sb, n], patient keys [n]."""
    if not seeds_a or not seeds_b:
        raise ValueError("each model needs the predictions of at least one seed")
    labels, first_a, first_b, pids = match_predictions(seeds_a[0], seeds_b[0])
    a, b = [first_a], [first_b]
    for extra, out in [(r, a) for r in seeds_a[1:]] + [(r, b) for r in seeds_b[1:]]:
        lab, _, scores, _ = match_predictions(seeds_a[0], extra)
        if not np.array_equal(lab, labels):  # pragma: no cover (match_predictions checks)
            raise ValueError("seeds disagree on labels")
        out.append(scores)
    return labels, np.vstack(a), np.vstack(b), pids


def compare_models(
    rows_a,
    rows_b,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    threshold: float = 0.0,
) -> dict:
    """Paired bootstrap (primary) and DeLong (secondary, first seed only) for Δ AUROC = B − A.

    ``rows_a``/``rows_b``: one model's prediction rows, or a list of row lists (one per seed)."""
    seeds_a = rows_a if rows_a and isinstance(rows_a[0], list | tuple) else [rows_a]
    seeds_b = rows_b if rows_b and isinstance(rows_b[0], list | tuple) else [rows_b]
    labels, a, b, pids = match_seeded(seeds_a, seeds_b)
    boot = paired_bootstrap(
        labels, a, b, pids, n_boot=n_boot, seed=seed, level=level, threshold=threshold
    )
    return {
        "bootstrap": boot,
        "delong": delong_test(labels, a[0], b[0], level=level),
        "n_findings": len(labels),
        "n_patients": len(set(pids)),
        "n_positive_findings": int(labels.sum()),
        "n_positive_patients": len({p for p, y in zip(pids, labels, strict=True) if y}),
    }
