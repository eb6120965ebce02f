"""Model selection on validation: the best round, and when to stop early.

One rule for every run kind (federated, centralized, local-only): the best round is the one
with the highest validation AUROC over headline findings (ties keep the earlier round; the
untrained round 0 is never chosen; an undefined AUROC never beats a defined one). With
``patience`` > 0 a run stops once that many scored rounds in a row brought no improvement.
Test data never enters either decision.
"""

from __future__ import annotations

import math


class EarlyStop(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised by a run's per-round hook when validation stopped improving."""

    def __init__(self, round: int, best_round: int):
        self.round, self.best_round = round, best_round
        super().__init__(f"early stop after round {round}: best validation round {best_round}")


class BestOnValidation:
    def __init__(self, patience: int = 0):
        self.patience = patience
        self.best_round: int | None = None
        self.best_value = -math.inf
        self.since_best = 0

    def offer(self, server_round: int, val_auroc: float) -> bool:
        """Record a scored round; True when it is the new best."""
        if server_round <= 0:
            return False
        finite = val_auroc is not None and math.isfinite(val_auroc)
        if self.best_round is None or (finite and val_auroc > self.best_value):
            self.best_round = server_round
            self.best_value = val_auroc if finite else -math.inf
            self.since_best = 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience
