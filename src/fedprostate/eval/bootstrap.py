"""Confidence intervals: bootstrap over patients (not findings) and spread over seeds.

Findings of one patient are correlated (same scanner session, same reader, often the same
lesion seen in several crops), so resampling findings would give intervals that are too narrow.
Every resample here draws *patients* with replacement and takes all of their findings; this is
expressed as an integer weight per finding (how often its patient was drawn), which lets every
statistic be computed for a whole batch of resamples with a few vectorised numpy operations.

Weighted kernels (``weighted_*``) take ``weights`` of shape [B, n] (one row per resample) and
return one value per row; with all weights equal they equal the ordinary statistic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

# Cap on B*n cells held at once, so large test sets do not need gigabytes.
_MAX_CELLS = 4_000_000


def _as_2d(weights: np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    if w.ndim == 1:
        w = w[None, :]
    if w.shape[1] != n:
        raise ValueError(f"weights have {w.shape[1]} columns for {n} findings")
    return w


def _tie_groups(sorted_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ascending scores: start (inclusive) and end (exclusive) of each one's tie group."""
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(first)), counts)
    return first[group], (first + counts)[group]


def weighted_auroc(labels, scores, weights) -> np.ndarray:
    """Weighted Mann-Whitney AUROC (ties count one half). NaN where a class has no weight."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    w = _as_2d(weights, len(s))
    order = np.argsort(s, kind="mergesort")
    y, s, w = y[order], s[order], w[:, order]
    start, end = _tie_groups(s)
    neg_cum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w * ~y, axis=1)], axis=1)
    below = neg_cum[:, start[y]]
    tied = neg_cum[:, end[y]] - below
    numerator = (w[:, y] * (below + 0.5 * tied)).sum(axis=1)
    denominator = w[:, y].sum(axis=1) * w[:, ~y].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
        )


def weighted_average_precision(labels, scores, weights) -> np.ndarray:
    """Weighted AP = sum over distinct thresholds of (recall step) x precision, as in sklearn."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    w = _as_2d(weights, len(s))
    order = np.argsort(-s, kind="mergesort")
    y, s, w = y[order], -s[order], w[:, order]  # ascending in -score = descending in score
    start, end = _tie_groups(s)
    group_end = np.unique(end) - 1  # last position of each tie group
    tp = np.cumsum(w * y, axis=1)[:, group_end]
    fp = np.cumsum(w * ~y, axis=1)[:, group_end]
    total_pos = tp[:, -1:]
    recall_step = np.diff(np.concatenate([np.zeros((len(w), 1)), tp], axis=1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
        ap = (recall_step * precision).sum(axis=1) / total_pos[:, 0]
    return np.where(total_pos[:, 0] > 0, ap, np.nan)


def weighted_mean(values, weights) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    w = _as_2d(weights, len(v))
    total = w.sum(axis=1)
    return np.where(total > 0, (w @ v) / np.where(total > 0, total, 1), np.nan)


def weighted_sens_spec(labels, predicted, weights) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity of boolean predictions, per weight row."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(predicted).astype(bool)
    w = _as_2d(weights, len(y))
    pos, neg = w[:, y].sum(axis=1), w[:, ~y].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(pos > 0, (w[:, y] @ p[y].astype(float)) / pos, np.nan)
        spec = np.where(neg > 0, (w[:, ~y] @ (~p[~y]).astype(float)) / neg, np.nan)
    return sens, spec


def calibration_bins(probs, n_bins: int = 10) -> np.ndarray:
    """Equal-width bin index in [0, n_bins) of each probability (1.0 goes to the last bin)."""
    p = np.asarray(probs, dtype=float)
    return np.minimum((p * n_bins).astype(int), n_bins - 1)


def weighted_ece(labels, probs, weights, n_bins: int = 10) -> np.ndarray:
    """Expected calibration error with equal-width bins: sum_b |sum y - sum p|_b / N."""
    y = np.asarray(labels, dtype=float)
    p = np.asarray(probs, dtype=float)
    w = _as_2d(weights, len(p))
    onehot = np.eye(n_bins)[calibration_bins(p, n_bins)]  # [n, n_bins]
    gap = np.abs((w * y) @ onehot - (w * p) @ onehot).sum(axis=1)
    total = w.sum(axis=1)
    return np.where(total > 0, gap / np.where(total > 0, total, 1), np.nan)


def patient_codes(patient_ids: Sequence) -> tuple[np.ndarray, int]:
    """Integer code per finding (same code = same patient) and the number of patients."""
    keys = np.asarray([str(p) for p in patient_ids])
    if len(keys) == 0:
        raise ValueError("no findings to bootstrap")
    _, codes = np.unique(keys, return_inverse=True)
    return codes, int(codes.max()) + 1


def bootstrap_statistic(
    patient_ids: Sequence,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Apply ``statistic(weights[b, n]) -> [b] or [b, k]`` to ``n_boot`` patient resamples.

    The same (patient_ids, n_boot, seed) always gives the same resamples, so two models scored
    on the same findings are resampled identically (paired).
    """
    codes, n_patients = patient_codes(patient_ids)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(n_boot, n_patients))
    chunk = max(1, _MAX_CELLS // max(len(codes), 1))
    out = []
    for lo in range(0, n_boot, chunk):
        block = draws[lo : lo + chunk]
        b = len(block)
        flat = (block + np.arange(b)[:, None] * n_patients).ravel()
        counts = np.bincount(flat, minlength=b * n_patients).reshape(b, n_patients)
        out.append(np.asarray(statistic(counts[:, codes].astype(float))))
    return np.concatenate(out, axis=0)


def seed_means(per_seed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[B, S] statistic per (resample, training seed) -> [B]: the mean over S seeds drawn with
    replacement, independently per resample (the seed level of a crossed bootstrap). With one
    seed it is that seed's column, and ``rng`` is not used."""
    per_seed = np.asarray(per_seed, dtype=float)
    if per_seed.shape[1] == 1:
        return per_seed[:, 0]
    idx = rng.integers(0, per_seed.shape[1], size=per_seed.shape)
    return np.take_along_axis(per_seed, idx, 1).mean(axis=1)


def seeded_auroc_ci(
    labels, scores, patient_ids: Sequence, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
    """AUROC of a model trained with S seeds (``scores`` [S, n] or [n]): the seed-mean AUROC and
    its crossed patient × seed bootstrap CI (patients, then seeds, drawn with replacement)."""
    y = np.asarray(labels, dtype=float)
    s = np.atleast_2d(np.asarray(scores, dtype=float))

    def kernel(w):
        return np.stack([weighted_auroc(y, row, w) for row in s], axis=1)

    estimate = float(kernel(np.ones((1, len(y))))[0].mean())
    per_seed = bootstrap_statistic(patient_ids, kernel, n_boot=n_boot, seed=seed)
    samples = seed_means(per_seed, np.random.default_rng([seed, 1]))
    return ci_dict(estimate, samples, level) | {"seeds": len(s)}


def percentile_ci(samples, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval of bootstrap samples, ignoring NaN (resamples lacking a class)."""
    v = np.asarray(samples, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return None, None
    alpha = (1.0 - level) / 2
    low, high = np.quantile(v, [alpha, 1 - alpha])
    return float(low), float(high)


def _num(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def ci_dict(estimate, samples, level: float = 0.95) -> dict:
    """{"estimate", "low", "high", "n_valid"}; None where undefined (JSON friendly)."""
    low, high = percentile_ci(samples, level)
    n_valid = int(np.isfinite(np.asarray(samples, dtype=float)).sum())
    return {"estimate": _num(estimate), "low": low, "high": high, "n_valid": n_valid}


_KERNELS = {
    "auroc": weighted_auroc,
    "ap": weighted_average_precision,
}


def bootstrap_ci(
    labels,
    scores,
    patient_ids: Sequence,
    metric: str = "auroc",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Point estimate and patient-bootstrap CI of ``metric`` ("auroc" | "ap" | "brier")."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    if metric == "brier":

        def kernel(w):
            return weighted_mean((s - y) ** 2, w)
    elif metric in _KERNELS:

        def kernel(w):
            return _KERNELS[metric](y, s, w)
    else:
        raise ValueError(f"unknown metric {metric!r}; expected auroc, ap or brier")
    estimate = kernel(np.ones((1, len(s))))[0]
    samples = bootstrap_statistic(patient_ids, kernel, n_boot=n_boot, seed=seed)
    return ci_dict(estimate, samples, level)


def seed_ci(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean over seeds (runs) with a Student-t interval: mean +- t_{n-1} * sd / sqrt(n).

    With fewer than two finite values the interval is undefined (low/high None).
    """
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return {"mean": None, "sd": None, "low": None, "high": None, "n": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "sd": None, "low": None, "high": None, "n": 1}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / np.sqrt(n)
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "n": n}
