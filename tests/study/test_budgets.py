"""Equal-MB and equal-compute views: the budget every arm reached, the choice on validation."""

import pytest

from fedprostate.study.budgets import at_budget, equal_budget_rows, round_costs


def _round(r, up, down, seen, val, test, evaluate=0):
    return {"round": r, "clients": [{"bytes_up": up, "bytes_down": down}],
            "bytes_down_evaluate": evaluate, "examples_seen": seen,
            "val": {"auroc": val}, "test": {"auroc": test}}  # fmt: skip


# a cheap arm (1 MB per round) that runs 6 rounds and an expensive one (3 MB) that stops at 2
CHEAP = [_round(r, 0.5e6, 0.5e6, 100, v, t) for r, v, t in
         [(1, 0.6, 0.9), (2, 0.7, 0.5), (3, 0.65, 0.99), (4, 0.8, 0.7), (5, 0.9, 0.6), (6, 0.95, 0.6)]]  # fmt: skip
COSTLY = [_round(1, 1e6, 1e6, 400, 0.7, 0.7, evaluate=1e6), _round(2, 1e6, 1e6, 400, 0.75, 0.72, evaluate=1e6)]  # fmt: skip


def test_costs_count_both_directions_and_evaluation_broadcasts():
    costs = round_costs(COSTLY)
    assert [c["mb"] for c in costs] == pytest.approx([3.0, 6.0])
    assert [c["examples"] for c in costs] == [400, 800]


def test_equal_mb_takes_the_smallest_total_and_chooses_on_validation():
    """Budget = 6 MB (the costly arm's total): the cheap arm may use rounds 1-6 -> round 6.
    At 3 MB it would be round 2 on validation (test prefers round 3: never chosen).
    Mutants: budget = the largest total, or the round picked by test AUROC -> fail."""
    budget, rows = equal_budget_rows({"cheap": [CHEAP], "costly": [COSTLY]}, "mb")
    assert budget == pytest.approx(6.0)
    assert rows[0][:3] == ["cheap", 6, pytest.approx(6.0)]
    pick = at_budget(round_costs(CHEAP), "mb", 3.0)
    assert pick["round"] == 2 and pick["test"] == 0.5
    budget, rows = equal_budget_rows({"cheap": [CHEAP], "costly": [COSTLY]}, "examples")
    assert budget == 600  # the cheap arm's 6 x 100 examples
    costly = next(r for r in rows if r[0] == "costly")
    assert costly[1] == 1 and costly[3] == 0.7  # only round 1 (400 examples) fits


def test_arms_that_spend_nothing_are_left_out():
    local = [{"round": 1, "val": {"auroc": 0.7}, "examples_seen": 10}]
    budget, rows = equal_budget_rows({"local": [local], "fed": [CHEAP]}, "mb")
    assert [r[0] for r in rows] == ["fed"] and budget == pytest.approx(6.0)
