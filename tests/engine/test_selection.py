"""Model selection on validation: best round, ties, round 0, early stopping."""

import math

from fedprostate.engine.selection import BestOnValidation


def test_best_round_is_the_highest_validation_auroc_never_round_0():
    chooser = BestOnValidation()
    assert not chooser.offer(0, 0.99)  # the untrained model is scored, never chosen
    for r, v in enumerate([0.6, 0.8, 0.8, math.nan, 0.7], start=1):
        chooser.offer(r, v)
    assert chooser.best_round == 2  # ties keep the earlier round; NaN never wins


def test_patience_stops_after_that_many_rounds_without_improvement():
    chooser = BestOnValidation(patience=2)
    decisions = []
    for r, v in enumerate([0.6, 0.7, 0.69, 0.65, 0.9], start=1):
        chooser.offer(r, v)
        decisions.append(chooser.should_stop)
    assert decisions == [False, False, False, True, False]
    assert not BestOnValidation(patience=0).should_stop
