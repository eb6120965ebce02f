"""Where a profiled run's time goes, by phase: cProfile statistics attributed by module and
function names (``benchmarks/fl_overhead.py --profile``).

A rule is ``(phase, regex)`` matched (``re.search``) against ``"path/to/module.py:function"`` (the
path with ``/``; C functions read ``~:<built-in method time.sleep>``). Every function's own time
(cProfile's ``tottime``) goes to the phase of its **nearest matching ancestor**: a function that
matches a rule owns its own time and that of the unmatched functions it calls, so
``torch.conv2d`` under ``train_local`` is local training while ``json.dumps`` under
``append_round`` is logging. An unmatched function's time is split among its callers in
proportion to the time each call edge carried (cProfile keeps one total per caller, not per
stack, so deep splits are approximate), and time with no matching ancestor is ``other``. Rules
are tried in order: the first that matches names the phase.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

OTHER = "other"

Key = tuple[str, int, str]  # pstats: (file, line, function)
# pstats.Stats.stats: key -> (primitive calls, calls, tottime, cumtime, {caller: edge}), where
# an edge is (primitive calls, calls, tottime, cumtime) of the calls from that caller
Stats = Mapping[Key, tuple]


def label(key: Key) -> str:
    file, _, func = key
    return f"{file.replace(chr(92), '/')}:{func}"


def _compile(rules: Iterable[tuple[str, str]]) -> list[tuple[str, re.Pattern]]:
    return [(phase, re.compile(pattern)) for phase, pattern in rules]


def _match(key: Key, rules: list[tuple[str, re.Pattern]]) -> str | None:
    text = label(key)
    return next((phase for phase, rx in rules if rx.search(text)), None)


def attribute(stats: Stats, rules: Iterable[tuple[str, str]]) -> dict[str, float]:
    """Seconds per phase (their sum is the profile's total own time)."""
    compiled = _compile(rules)
    memo: dict[Key, dict[str, float]] = {}

    def shares(key: Key, path: frozenset) -> tuple[dict[str, float], bool]:
        """(fraction per phase, whether a recursion cycle was cut on the way: not memoized)."""
        if key in memo:
            return memo[key], False
        phase = _match(key, compiled)
        if phase is not None:
            memo[key] = {phase: 1.0}
            return memo[key], False
        edges = stats[key][4] if key in stats else {}
        callers = {c: e for c, e in edges.items() if c not in path and c != key}
        cut = len(callers) < len(edges)
        if not callers:
            if cut:  # reached only through a cycle: the caller outside it decides
                return {}, True
            memo[key] = {OTHER: 1.0}
            return memo[key], False
        weights = {c: float(e[3]) or float(e[2]) for c, e in callers.items()}
        if sum(weights.values()) <= 0:  # calls too short to time: count them instead
            weights = {c: float(e[1]) or 1.0 for c, e in callers.items()}
        out: dict[str, float] = {}
        used = 0.0
        for caller, w in weights.items():
            sub, sub_cut = shares(caller, path | {key})
            cut = cut or sub_cut
            if sub:
                used += w
                for p, f in sub.items():
                    out[p] = out.get(p, 0.0) + f * w
        if used <= 0:
            return {}, True
        out = {p: v / used for p, v in out.items()}
        if not cut:
            memo[key] = out
        return out, cut

    seconds: dict[str, float] = {}
    for key, row in stats.items():
        own = float(row[2])
        if own <= 0:
            continue
        for phase, fraction in (shares(key, frozenset())[0] or {OTHER: 1.0}).items():
            seconds[phase] = seconds.get(phase, 0.0) + own * fraction
    return seconds


def table_rows(
    seconds: Mapping[str, float], order: Iterable[str], per: float = 1.0
) -> list[tuple[str, float, float]]:
    """``(phase, seconds ÷ per, share of the total)`` in ``order``, then any other phase, then
    ``other``; phases with no time are left out."""
    total = sum(seconds.values()) or 1.0
    names = [p for p in order if p in seconds]
    names += sorted(p for p in seconds if p not in names and p != OTHER)
    if OTHER in seconds and OTHER not in names:
        names.append(OTHER)
    return [(p, seconds[p] / per, seconds[p] / total) for p in names if seconds[p] > 0]
