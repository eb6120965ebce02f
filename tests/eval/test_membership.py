"""Membership-attack AUC, its CI and the AUC bound that (epsilon, delta)-DP implies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedprostate.eval.membership import attack_scores, auc, auc_with_ci, dp_auc_bound, per_patient


def test_auc_separates_and_ties_count_half():
    member = np.array([1, 1, 0, 0])
    assert auc(member, np.array([3.0, 2.0, 1.0, 0.0])) == 1.0
    assert auc(member, np.array([0.0, 0.0, 0.0, 0.0])) == 0.5
    assert auc(member, np.array([0.0, 1.0, 2.0, 3.0])) == 0.0


def test_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    member = np.repeat([1, 0], 40)
    scores = rng.normal(size=80) + 0.8 * member
    r = auc_with_ci(member, scores, n_boot=300)
    assert r["ci_low"] < r["auc"] < r["ci_high"] and r["members"] == 40
    assert 0.6 < r["auc"] < 0.85


def test_attacks_score_members_with_low_loss_higher():
    probs, labels = np.array([0.9, 0.6, 0.1]), np.array([1, 1, 1])
    for attack in ("loss", "confidence"):
        s = attack_scores(probs, labels, attack)
        assert s[0] > s[1] > s[2]
    mean, order = per_patient(np.array([1.0, 3.0, 5.0]), ["a", "a", "b"])
    assert order == ["a", "b"] and list(mean) == [2.0, 5.0]


def test_dp_auc_bound():
    assert dp_auc_bound(0.0, 0.0) == pytest.approx(0.5, abs=1e-6)
    assert dp_auc_bound(math.inf, 0.0) == 1.0
    values = [dp_auc_bound(e, 1e-5) for e in (0.5, 1, 3, 8)]
    assert values == sorted(values) and values[-1] < 1.0
    # pure eps-DP: the bound is the closed form e^eps / (1 + e^eps)
    for eps in (0.5, 1.0, 3.0):
        assert dp_auc_bound(eps, 0.0) == pytest.approx(
            math.exp(eps) / (1 + math.exp(eps)), abs=1e-6
        )
