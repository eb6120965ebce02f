"""The likelihood-ratio attack (LiRA, Carlini et al. 2022) with few shadow models: the statistics.

The attacker knows a population of patients (here: the audit pool, members and non-members of the
audited run, with their labels) and the training recipe. It trains K shadow models, each on a
random half of the pool chosen so that every patient is IN (trained on) for K // 2 shadows and
OUT for the others (:func:`split_pool`). For each patient and model the statistic is the
logit-scaled confidence on the patient's true label, phi = log(p / (1 - p)) averaged over the
patient's crops (:func:`logit_confidence`), which is close to Gaussian across models.

* offline LiRA (OUT shadows only): score = Phi((phi_target - mu_out) / sigma), the one-sided
  probability that an OUT model gives the patient a confidence below the target's
  (returned as the z-score, a monotone transform, so large values are not tied at 1);
* online LiRA (IN and OUT): score = log N(phi_target; mu_in, sigma) - log N(phi_target; mu_out,
  sigma).

With a handful of shadows a patient's own variance cannot be estimated (one or two values), so
both use one global sigma (Carlini et al.'s "fixed variance"): the pooled within-patient spread
of the shadows' phi, or the spread of all shadow phi when no patient has two values on a side.
A common sigma only rescales both scores, so the attack's ranking (its AUC) does not depend on it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logit
from sklearn.metrics import roc_curve

MIN_SHADOWS = 2
LOW_FPRS = (0.01, 0.1)
_CLIP = 1e-7


def logit_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = log(p / (1 - p)) with p = the probability given to each crop's true label."""
    probs = np.asarray(probs, dtype=np.float64)
    p_true = np.where(np.asarray(labels) == 1, probs, 1.0 - probs)
    return logit(np.clip(p_true, _CLIP, 1.0 - _CLIP))


def split_pool(n_patients: int, shadows: int, seed: int = 0) -> np.ndarray:
    """[shadows, n_patients] booleans: IN for exactly ``shadows // 2`` shadows per patient, at
    random, so each shadow trains on about half of the pool and every patient is also OUT."""
    if shadows < MIN_SHADOWS:
        raise ValueError(
            f"--shadows {shadows}: LiRA needs at least {MIN_SHADOWS} shadow models "
            "(each patient IN for half of them, OUT for the rest)"
        )
    rng = np.random.default_rng(seed)
    ranks = np.argsort(rng.random((n_patients, shadows)), axis=1)
    return (ranks < shadows // 2).T


def _global_sigma(phi: np.ndarray, masks: list[np.ndarray]) -> float:
    """Pooled within-patient standard deviation of ``phi`` over the groups in ``masks``."""
    ss, dof = 0.0, 0
    for mask in masks:
        counts = mask.sum(axis=0)
        sums = np.where(mask, phi, 0.0).sum(axis=0)
        means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        ss += float(np.where(mask, (phi - means) ** 2, 0.0).sum())
        dof += int((counts - 1).clip(min=0).sum())
    if dof > 0 and ss > 0:
        return math.sqrt(ss / dof)
    spread = float(np.std(phi))
    return spread if spread > 0 else 1.0


def lira_scores(
    target_phi: np.ndarray, shadow_phi: np.ndarray, is_in: np.ndarray
) -> dict[str, np.ndarray | float]:
    """Offline and online LiRA membership scores (higher = more likely a member), per patient.

    ``target_phi``: [n] the audited model's phi; ``shadow_phi``: [K, n] the shadows' phi;
    ``is_in``: [K, n] whether shadow k trained on patient i. Every patient needs at least one
    OUT shadow (offline) and one IN shadow (online), as :func:`split_pool` gives.
    """
    target_phi = np.asarray(target_phi, dtype=np.float64)
    shadow_phi = np.asarray(shadow_phi, dtype=np.float64)
    is_in = np.asarray(is_in, dtype=bool)
    if shadow_phi.shape != is_in.shape or shadow_phi.shape[1:] != target_phi.shape:
        raise ValueError(
            f"shapes differ: target {target_phi.shape}, shadows {shadow_phi.shape}, "
            f"IN mask {is_in.shape}"
        )
    out = ~is_in
    n_in, n_out = is_in.sum(axis=0), out.sum(axis=0)
    if (n_out == 0).any() or (n_in == 0).any():
        raise ValueError("every patient needs at least one IN and one OUT shadow model")
    mu_in = np.where(is_in, shadow_phi, 0.0).sum(axis=0) / n_in
    mu_out = np.where(out, shadow_phi, 0.0).sum(axis=0) / n_out
    sigma = _global_sigma(shadow_phi, [is_in, out])
    offline = (target_phi - mu_out) / sigma
    online = ((target_phi - mu_out) ** 2 - (target_phi - mu_in) ** 2) / (2 * sigma**2)
    return {"offline": offline, "online": online, "sigma": sigma}


def tpr_at_fpr(member: np.ndarray, scores: np.ndarray, fpr: float) -> float | None:
    """TPR at false-positive rate ``fpr`` (the best ROC point at or below it), or None when the
    non-members are too few for that rate to mean anything (fewer than 1 / fpr of them)."""
    member = np.asarray(member)
    n_neg = int((member == 0).sum())
    if n_neg * fpr < 1 or (member == 1).sum() == 0:
        return None
    fprs, tprs, _ = roc_curve(member, scores)
    return float(tprs[fprs <= fpr + 1e-12].max())


def low_fpr_report(member: np.ndarray, scores: np.ndarray) -> dict:
    """{"tpr_at_fpr_0.01": value or None, ...}, and why a rate is missing."""
    out: dict = {}
    for fpr in LOW_FPRS:
        value = tpr_at_fpr(member, scores, fpr)
        out[f"tpr_at_fpr_{fpr:g}"] = value
        if value is None:
            need = math.ceil(1 / fpr)
            out[f"tpr_at_fpr_{fpr:g}_missing"] = (
                f"needs at least {need} non-members, the audit has {int((member == 0).sum())}"
            )
    return out
