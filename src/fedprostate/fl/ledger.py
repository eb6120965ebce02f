"""Per-round bookkeeping of the strategy hooks, and a Grid view with a fixed node list."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RoundLedger:
    """What happened in the current round, per client, filled by the hooks, read by the recorder."""

    down: dict[int, int] = field(default_factory=dict)  # node id → bytes broadcast (train)
    clients: list[dict] = field(default_factory=list)  # accepted train replies
    rejected: list[dict] = field(default_factory=list)  # filtered replies and their reasons
    evaluation: list[dict] = field(default_factory=list)  # federated evaluation per site
    notes: list[str] = field(default_factory=list)  # skipped rounds, dropped aggregates
    evaluated: dict = field(default_factory=dict)  # aggregated federated evaluation metrics

    def pop(self) -> dict:
        out = {"clients": self.clients, "rejected": self.rejected, "fed_eval": self.evaluation}
        if self.notes:
            out["notes"] = self.notes
        if "auroc" in self.evaluated:
            out["fed_eval_auroc"] = float(self.evaluated["auroc"])
        self.down, self.clients, self.rejected, self.evaluation, self.notes = {}, [], [], [], []
        self.evaluated = {}
        return out


class NodesSnapshot:
    """A Grid whose node list is fixed for one sampling (Flower's sampler then never waits)."""

    def __init__(self, grid, nodes: list[int]):
        self._grid, self._nodes = grid, nodes

    def get_node_ids(self):
        return list(self._nodes)

    def __getattr__(self, name):
        return getattr(self._grid, name)
