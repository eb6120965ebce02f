"""The report shows the Holm p-value of the direction a comparison was decided in."""

from __future__ import annotations

import pytest

from fedprostate.study.report import holm_p_shown


def test_a_not_reproduced_comparison_made_inconclusive_by_holm_shows_its_p_against():
    """study-medium run 2, pre-trained vs random init: CI [-0.114, -0.012] (decided against the
    claim), Holm over 11 made it inconclusive; the report printed p_for's 1.000 instead of
    p_against's 0.162. Mutant: the old rule (p_for unless "not reproduced") -> 1.0 -> fails."""
    comp = {"verdict": "inconclusive", "verdict_unadjusted": "not reproduced",
            "p_for_holm": 1.0, "p_against_holm": 0.162}  # fmt: skip
    assert holm_p_shown(comp) == pytest.approx(0.162)


@pytest.mark.parametrize(
    ("verdict", "expected"), [("reproduced", 0.02), ("not reproduced", 0.6), ("inconclusive", 0.02)]
)
def test_each_verdict_shows_the_direction_it_was_decided_in(verdict, expected):
    comp = {"verdict": verdict, "p_for_holm": 0.02, "p_against_holm": 0.6}
    assert holm_p_shown(comp) == pytest.approx(expected)
