"""Membership inference: attack scores, their AUC with a patient bootstrap CI, and the largest AUC
an (epsilon, delta)-DP guarantee allows.

The privacy unit is the patient, so every attack scores a patient (the mean over their crops),
members = training patients, non-members = held-out patients of the same sites. Attacks:

* ``loss``: members have lower loss; score = -(mean cross-entropy of the patient's crops);
* ``confidence``: members get higher probability on their true label; score = its mean.

Bound: under (eps, delta)-DP every membership test's TPR at false-positive rate x is at most
min(1, e^eps x + delta, 1 - e^-eps (1 - delta - x)) (Kairouz et al. 2015), so its AUC is at most
the integral of that curve over x in [0, 1] (:func:`dp_auc_bound`; 0.5 at eps = 0, 1 at eps = inf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ATTACKS = ("loss", "confidence")


def per_patient(values: np.ndarray, patients: Sequence) -> tuple[np.ndarray, list]:
    """(mean of ``values`` per patient, the patients in order of first appearance)."""
    order = list(dict.fromkeys(patients))
    index = {p: i for i, p in enumerate(order)}
    codes = np.asarray([index[p] for p in patients])
    sums = np.bincount(codes, weights=values, minlength=len(order))
    return sums / np.bincount(codes, minlength=len(order)), order


def attack_scores(probs: np.ndarray, labels: np.ndarray, attack: str) -> np.ndarray:
    """Per-crop membership score (higher = more likely a member) from P(csPCa) and the label."""
    p_true = np.clip(np.where(labels == 1, probs, 1 - probs).astype(np.float64), 1e-7, 1.0)
    if attack == "loss":
        return np.log(p_true)  # = -cross-entropy
    if attack == "confidence":
        return p_true
    raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")


def auc(member: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of ``scores`` for telling members (1) from non-members (0); ties count half."""
    pos, neg = scores[member == 1], scores[member == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def auc_with_ci(
    member: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
    """AUC and a percentile CI from resampling patients within members and within non-members."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(member == 1), np.flatnonzero(member == 0)
    samples = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        samples.append(auc(member[idx], scores[idx]))
    lo, hi = (
        np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
        if samples
        else (
            math.nan,
            math.nan,
        )
    )
    return {
        "auc": auc(member, scores),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "members": int(len(pos)),
        "non_members": int(len(neg)),
    }


def dp_auc_bound(epsilon: float, delta: float, grid: int = 20001) -> float:
    """The largest membership-attack AUC an (epsilon, delta)-DP mechanism allows."""
    if not math.isfinite(epsilon):
        return 1.0
    x = np.linspace(0.0, 1.0, grid)
    tpr = np.minimum.reduce(
        [
            np.ones_like(x),
            math.exp(epsilon) * x + delta,
            1 - math.exp(-epsilon) * (1 - delta - x),
        ]
    )
    return float(np.trapezoid(np.clip(tpr, 0, 1), x))
