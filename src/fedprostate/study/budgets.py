"""Arms compared at equal budgets: communicated MB, and local compute (training steps × batch).

The verdicts use each arm at its *own* budget: the pre-registered stopping rule (stop after
``fl.patience`` scored rounds without a better validation AUROC, at most ``fl.rounds`` rounds)
and the validation-best round. These tables add two descriptive views of the same runs, with no
verdict: for a budget X — the smallest total that every arm of the section reached, so each arm
has at least one round within it — each arm's round with the best validation AUROC among the
rounds whose cumulative cost is ≤ X, and that round's validation and test AUROC (the test value
is read after the round is chosen, never to choose it), averaged over the arm's seeds.

Cost per round, from each run's metrics.jsonl:
- MB: every byte of model tensors on the wire, both directions — train broadcasts and replies
  (``clients[].bytes_down``/``bytes_up``) and evaluation broadcasts (``bytes_down_evaluate``);
  ArrayRecord npy bytes + tensor names, as ``ArrayRecord.count_bytes()`` counts them.
- compute: ``examples_seen`` = Σ over the round's training of steps × batch size.
"""

from __future__ import annotations

import math

import numpy as np


def round_costs(rounds: list[dict]) -> list[dict]:
    """Per scored round: cumulative MB, cumulative examples, validation and test AUROC."""
    mb = seen = 0.0
    out = []
    for r in rounds:
        if r.get("round", 0) <= 0:
            continue
        clients = r.get("clients") or []
        mb += sum(c.get("bytes_up", 0) + c.get("bytes_down", 0) for c in clients) / 1e6
        mb += r.get("bytes_down_evaluate", 0) / 1e6
        seen += r.get("examples_seen", 0)
        val = (r.get("val") or {}).get("auroc")
        if val is None:
            continue
        test = (r.get("test") or {}).get("auroc")
        out.append({"round": int(r["round"]), "mb": mb, "examples": seen, "val": val, "test": test})
    return out


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def at_budget(costs: list[dict], key: str, budget: float) -> dict | None:
    """The validation-best round among those with cumulative ``key`` ≤ ``budget`` (ties: the
    earlier round); None when no round fits."""
    fits = [c for c in costs if c[key] <= budget * (1 + 1e-9)]
    if not fits:
        return None
    return max(fits, key=lambda c: (c["val"] if _finite(c["val"]) else -math.inf, -c["round"]))


def equal_budget_rows(arms: dict[str, list[list[dict]]], key: str) -> tuple[float | None, list]:
    """``arms``: label -> per-seed metrics.jsonl rounds. Returns (budget, rows) where rows are
    [label, mean round, mean cost, mean val AUROC, mean test AUROC, seeds]; arms that spend
    nothing of ``key`` (local-only MB, ...) are left out."""
    costs = {label: [round_costs(seed) for seed in seeds] for label, seeds in arms.items() if seeds}
    costs = {
        label: [c for c in seeds if c]
        for label, seeds in costs.items()
        if any(c and c[-1][key] > 0 for c in seeds)
    }
    costs = {label: seeds for label, seeds in costs.items() if seeds}
    if not costs:
        return None, []
    budget = min(c[-1][key] for seeds in costs.values() for c in seeds)
    rows = []
    for label, seeds in costs.items():
        picks = [p for p in (at_budget(c, key, budget) for c in seeds) if p is not None]
        if not picks:
            continue
        mean = {k: _mean([p[k] for p in picks]) for k in ("round", key, "val", "test")}
        rows.append([label, mean["round"], mean[key], mean["val"], mean["test"], len(picks)])
    return budget, rows


def _mean(values) -> float | None:
    v = [x for x in values if _finite(x)]
    return float(np.mean(v)) if v else None
