"""Verdict rules that need evidence: thresholds, boundaries, zero variance, Holm, sizes, IUT.

Each test names the mutation of ``eval/verdicts.py`` (or ``eval/compare.py``) it was seen to
catch when the code was broken on purpose.
"""

import numpy as np
import pytest

from fedprostate.config import NONINFERIORITY_MARGIN, SUPERIORITY_MARGIN
from fedprostate.eval.bootstrap import bootstrap_statistic, percentile_ci, weighted_auroc
from fedprostate.eval.compare import compare_models, paired_bootstrap
from fedprostate.eval.verdicts import (
    apply_holm,
    bootstrap_p,
    combine,
    holm,
    size_gate,
    threshold,
    verdict,
    zero_variance,
)


def test_one_threshold_per_claim_used_on_both_sides():
    """Mutant: superiority decided against 0 instead of its margin (the old rule) -> fails."""
    # superiority with a smallest gain of interest 0.01: a CI above 0 but not above 0.01 shows
    # no gain of interest; a CI entirely below 0.01 excludes one.
    assert verdict(0.005, 0.03, claim="superior", margin=0.01) == "inconclusive"
    assert verdict(0.011, 0.03, claim="superior", margin=0.01) == "reproduced"
    assert verdict(-0.02, 0.009, claim="superior", margin=0.01) == "not reproduced"
    assert threshold("superior", 0.01) == 0.01 and threshold("noninferior", 0.02) == -0.02
    with pytest.raises(ValueError):
        threshold("superior", -0.1)
    with pytest.raises(ValueError):
        threshold("better", 0.0)


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (-0.019, 0.01, "reproduced"),  # just above -0.02
        (-0.021, 0.01, "inconclusive"),  # just below: doubling the margin makes it reproduced
        (-0.05, -0.021, "not reproduced"),  # entirely below -0.02
        (-0.05, -0.019, "inconclusive"),
    ],
)
def test_noninferiority_boundary_at_the_preregistered_margin(low, high, expected):
    """Mutant: margin doubled in ``threshold`` (-2 * margin) -> the -0.021 and -0.05/-0.021
    cases flip to reproduced / inconclusive and fail."""
    assert NONINFERIORITY_MARGIN == 0.02 and SUPERIORITY_MARGIN == 0.0
    assert verdict(low, high, claim="noninferior", margin=NONINFERIORITY_MARGIN) == expected


def test_zero_variance_is_inconclusive_at_any_sample_size():
    """Mutant: ``flat`` ignored in ``verdict`` -> identical arms are 'non-inferior' -> fails."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = rng.normal(size=400) + y
    pats = np.arange(400) // 2
    res = paired_bootstrap(y, s, s.copy(), pats, n_boot=300, threshold=-0.02)
    assert (res["low"], res["high"]) == (0.0, 0.0) and res["flat"]
    assert verdict(res["low"], res["high"], claim="noninferior", margin=0.02, flat=True) == (
        "inconclusive"
    )
    assert zero_variance([0.1, 0.1, np.nan]) and not zero_variance([0.1, 0.1000001])
    # the CI rule alone would have said reproduced:
    assert verdict(0.0, 0.0, claim="noninferior", margin=0.02) == "reproduced"


def test_bootstrap_p_values_match_the_two_sided_interval():
    samples = np.linspace(-0.01, 0.09, 1000)  # 10 % of them at or below 0
    p_for, p_against = bootstrap_p(samples, 0.0)
    assert p_for == pytest.approx(2 * (101 + 1) / 1001, rel=0.02) and p_against == 1.0
    p_for, _ = bootstrap_p(samples, -0.02)
    assert p_for == pytest.approx(2 / 1001)


def test_holm_adjusted_p_values_hand_computed():
    """Mutants: Bonferroni (x m), no step-down max, or no correction -> fail."""
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.01, None, 0.02]) == [pytest.approx(0.02), None, pytest.approx(0.02)]
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_holm_turns_decided_verdicts_inconclusive():
    """Mutant: ``apply_holm`` keeps the unadjusted verdicts -> fails."""
    family = [
        {"verdict": "reproduced", "p_for": 0.01, "p_against": 1.0},
        {"verdict": "reproduced", "p_for": 0.04, "p_against": 1.0},
        {"verdict": "not reproduced", "p_for": 1.0, "p_against": 0.03},
        {"verdict": "inconclusive", "p_for": 0.2, "p_against": 0.9},
    ]
    apply_holm(family, alpha=0.05)
    assert [r["verdict"] for r in family] == [
        "reproduced",  # 0.01 x 4 = 0.04
        "inconclusive",  # 0.04 x 2 = 0.08 (after the step-down max)
        "inconclusive",  # against: 0.03 x 4 = 0.12
        "inconclusive",
    ]
    assert family[1]["verdict_unadjusted"] == "reproduced" and "Holm" in family[1]["reason"]


def test_claims_of_two_comparisons_use_intersection_union():
    """Mutants: 'any not reproduced' replaced by 'any not reproduced or inconclusive', or
    'all reproduced' by 'any reproduced' -> fail."""
    assert combine(["reproduced", "reproduced"]) == "reproduced"
    assert combine(["reproduced", "inconclusive"]) == "inconclusive"
    assert combine(["inconclusive", "inconclusive"]) == "inconclusive"
    assert combine(["reproduced", "not reproduced"]) == "not reproduced"
    assert combine(["inconclusive", "not reproduced"]) == "not reproduced"
    assert combine([]) == "inconclusive"


def test_minimum_test_size():
    """Mutant: ``<`` replaced by ``<=`` or a check removed -> fails at the boundary."""
    assert size_gate(100, 30, 100, 30) is None
    assert "99 test patients" in size_gate(99, 30, 100, 30)
    assert "29 positives" in size_gate(100, 29, 100, 30)


def _clustered(n_patients: int, copies: int, seed: int = 0):
    """Findings that repeat their patient exactly ``copies`` times (perfectly correlated)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_patients)
    a = rng.normal(size=n_patients) + 0.8 * y
    b = a + rng.normal(scale=0.7, size=n_patients) + 0.3 * y
    rep = np.repeat(np.arange(n_patients), copies)
    return y[rep], a[rep], b[rep], rep


def test_paired_bootstrap_resamples_patients_not_findings():
    """Five identical copies of each patient's finding carry one patient's information: the
    patient bootstrap gives the same CI as one copy. Mutant: resampling findings (patient ids
    replaced by finding ids) -> the CI shrinks by about sqrt(5) -> fails."""
    y1, a1, b1, p1 = _clustered(150, 1)
    y5, a5, b5, p5 = _clustered(150, 5)
    one = paired_bootstrap(y1, a1, b1, p1, n_boot=800, seed=3)
    five = paired_bootstrap(y5, a5, b5, p5, n_boot=800, seed=3)
    assert five["delta"] == pytest.approx(one["delta"])
    width = five["high"] - five["low"]
    assert width == pytest.approx(one["high"] - one["low"], rel=0.05)
    by_finding = paired_bootstrap(y5, a5, b5, np.arange(len(y5)), n_boot=800, seed=3)
    assert by_finding["high"] - by_finding["low"] < 0.7 * width  # what the mutant would give


def test_paired_bootstrap_applies_one_resample_to_both_arms():
    """B = A + a small constant gain on positives: pairing gives a tight CI above 0.
    Mutant: independent resamples for A and B -> the CI widens past 0 -> fails."""
    rng = np.random.default_rng(5)
    n = 300
    y = rng.integers(0, 2, n)
    a = rng.normal(size=n) + y
    b = a + 0.15 * y
    res = paired_bootstrap(y, a, b, np.arange(n), n_boot=500)
    assert res["low"] > 0 and res["high"] - res["low"] < 0.05


def _seed_rows(y, scores, pats):
    return [
        {"site": "S", "patient_id": str(p), "finding_id": f"f{i}", "source": "reader",
         "label": int(t), "score": float(s)}
        for i, (t, s, p) in enumerate(zip(y, scores, pats, strict=True))
    ]  # fmt: skip


def test_seeds_enter_the_uncertainty():
    """B's three seeds disagree (AUROC about 0.62, 0.75, 0.88): the crossed patient x seed CI
    must be wider than the patient-only CI of the seed-mean difference. Mutant: seeds not
    resampled (``seed_means`` returns the plain mean) -> fails."""
    rng = np.random.default_rng(11)
    n = 400
    y = rng.integers(0, 2, n)
    pats = np.arange(n)
    base = rng.normal(size=n)
    a = base + 1.0 * y
    seeds_b = [base + rng.normal(scale=0.3, size=n) + g * y for g in (0.4, 1.0, 1.7)]
    crossed = compare_models(
        [_seed_rows(y, a, pats)], [_seed_rows(y, s, pats) for s in seeds_b], n_boot=800
    )["bootstrap"]
    assert crossed["seeds_b"] == 3 and len(crossed["auroc_b_seeds"]) == 3
    assert crossed["delta"] == pytest.approx(np.mean(crossed["auroc_b_seeds"]) - crossed["auroc_a"])
    fixed = paired_bootstrap(y, a, np.vstack(seeds_b), pats, n_boot=800)
    assert fixed["low"] == crossed["low"]  # compare_models only aligns the rows

    def seed_mean_delta(weights):  # patient resampling only, seeds fixed
        mean_b = np.mean([weighted_auroc(y, s, weights) for s in seeds_b], axis=0)
        return mean_b - weighted_auroc(y, a, weights)

    low, high = percentile_ci(bootstrap_statistic(pats, seed_mean_delta, n_boot=800), 0.95)
    assert crossed["high"] - crossed["low"] > 1.5 * (high - low)
