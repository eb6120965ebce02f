"""LiRA statistics (eval.lira) on synthetic numbers whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedprostate.eval.lira import (
    lira_scores,
    logit_confidence,
    low_fpr_report,
    split_pool,
    tpr_at_fpr,
)
from fedprostate.eval.membership import auc


def _world(n=300, k=4, shift=1.5, seed=0):
    """Patients of very different difficulty (spread 3) whose phi rises by ``shift`` when a model
    trains on them (noise 0.5): the shadows' phi, who trained on whom, and a target model's phi
    for members (first half) and non-members."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 3, n)
    is_in = split_pool(n, k, seed)
    shadow = difficulty + shift * is_in + rng.normal(0, 0.5, (k, n))
    member = (np.arange(n) < n // 2).astype(int)
    target = difficulty + shift * member + rng.normal(0, 0.5, n)
    return target, shadow, is_in, member


def test_members_with_shifted_phi_are_found_and_difficulty_is_calibrated_away():
    target, shadow, is_in, member = _world()
    scores = lira_scores(target, shadow, is_in)
    # phi alone is swamped by how hard each patient is; LiRA compares with the patient's own OUT
    assert auc(member, target) < 0.75
    assert auc(member, scores["offline"]) > 0.9
    assert auc(member, scores["online"]) > 0.9


def test_identical_in_and_out_give_chance():
    target, shadow, is_in, member = _world(shift=0.0)
    scores = lira_scores(target, shadow, is_in)
    for variant in ("offline", "online"):
        assert abs(auc(member, scores[variant]) - 0.5) < 0.1


def test_offline_uses_the_out_shadows_and_online_the_likelihood_ratio():
    # one patient, shadows 0 and 1 OUT (phi 0 and 2), shadows 2 and 3 IN (phi 10 and 12)
    shadow = np.array([[0.0], [2.0], [10.0], [12.0]])
    is_in = np.array([[False], [False], [True], [True]])
    got = lira_scores(np.array([1.0]), shadow, is_in)
    assert got["sigma"] == pytest.approx(math.sqrt(2))  # within-side spread, not 0..12
    assert got["offline"][0] == pytest.approx(0.0)  # the target sits on the OUT mean
    # log N(1; 11, s) - log N(1; 1, s) = -(10^2) / (2 s^2) = -25
    assert got["online"][0] == pytest.approx(-25.0)
    near_in = lira_scores(np.array([11.0]), shadow, is_in)
    assert near_in["online"][0] == pytest.approx(25.0) and near_in["offline"][0] > 7


def test_pool_split_is_balanced_and_needs_two_shadows():
    is_in = split_pool(101, 4, seed=3)
    assert is_in.shape == (4, 101)
    assert (is_in.sum(axis=0) == 2).all()  # every patient IN for half the shadows, OUT for half
    assert np.abs(is_in.sum(axis=1) - 50.5).max() < 15
    assert (split_pool(10, 3).sum(axis=0) == 1).all()
    for k in (0, 1):
        with pytest.raises(ValueError, match="at least 2 shadow"):
            split_pool(10, k)
    with pytest.raises(ValueError, match="IN and one OUT"):
        lira_scores(np.zeros(1), np.zeros((2, 1)), np.array([[True], [True]]))


def test_logit_confidence_is_on_the_true_label():
    phi = logit_confidence(np.array([0.9, 0.1, 0.9]), np.array([1, 0, 0]))
    assert phi == pytest.approx([math.log(9), math.log(9), -math.log(9)])
    assert np.isfinite(logit_confidence(np.array([1.0, 0.0]), np.array([1, 1]))).all()


def test_tpr_at_low_fpr_and_when_there_are_too_few_non_members():
    member = np.array([1, 1, 1, 1] + [0] * 10)
    scores = np.array([9.5, 8.5, 100.0, -1.0, *range(10)])
    assert tpr_at_fpr(member, scores, 0.1) == pytest.approx(0.75)  # one false positive (9)
    report = low_fpr_report(member, scores)
    assert report["tpr_at_fpr_0.01"] is None
    assert "100 non-members, the audit has 10" in report["tpr_at_fpr_0.01_missing"]
    assert report["tpr_at_fpr_0.1"] == pytest.approx(0.75)
