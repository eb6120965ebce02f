"""Guards around a Flower strategy's own aggregation (plain functions, no strategy subclassing).

- :func:`clip_update`: update-norm clipping with Flower's ``compute_clip_model_update`` (the
  reply minus the model the site received, scaled to at most ``clip_norm`` in L2 norm).
- :func:`snapshot` / :func:`restore`: the server-side optimizer state a Flower strategy mutates
  while aggregating (FedOpt's ``current_arrays``, ``m_t``, ``v_t``; FedAvgM's momentum), so a
  failed or non-finite aggregation leaves it exactly as it was.
- :func:`non_finite`: why an aggregate (or the state it produced) must not replace the global.
- :func:`guarded_aggregate`: a strategy's aggregation that never ends the run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.supercore.differential_privacy import compute_clip_model_update, get_norm

from fedprostate.fl import wire

STATE_ATTRS = ("current_arrays", "m_t", "v_t", "momentum_vector")


def clip_update(
    tensors: dict[str, np.ndarray], reference: dict[str, np.ndarray], clip_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """(tensors with the update clipped to ``clip_norm``, the update's norm before clipping)."""
    names = sorted(tensors)
    new = [np.array(tensors[k], dtype=np.float64) for k in names]
    ref = [np.asarray(reference[k], dtype=np.float64) for k in names]
    norm = get_norm([a - b for a, b in zip(new, ref, strict=True)])
    if clip_norm > 0 and norm > clip_norm:
        compute_clip_model_update(new, ref, clip_norm)
    return {k: v.astype(np.float32) for k, v in zip(names, new, strict=True)}, norm


def snapshot(strategy: Any) -> dict[str, Any]:
    return {a: copy.deepcopy(getattr(strategy, a)) for a in STATE_ATTRS if hasattr(strategy, a)}


def restore(strategy: Any, saved: dict[str, Any]) -> None:
    for attr, value in saved.items():
        setattr(strategy, attr, copy.deepcopy(value))


def _bad(named: dict[str, Any] | list | None) -> str | None:
    if named is None:
        return None
    items = named.items() if isinstance(named, dict) else enumerate(named)
    for name, arr in items:
        arr = np.asarray(arr)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            return str(name)
    return None


def non_finite(arrays: dict[str, np.ndarray] | None, strategy: Any) -> str | None:
    """Why the aggregate or the strategy state it left is unusable (NaN/Inf), or None."""
    name = _bad(arrays)
    if name is not None:
        return f"aggregate tensor {name} has NaN/Inf"
    for attr in ("m_t", "v_t", "momentum_vector"):
        name = _bad(getattr(strategy, attr, None))
        if name is not None:
            return f"server optimizer state {attr}[{name}] has NaN/Inf"
    return None


_FAILED = object()


def guarded_aggregate(
    strategy: Any,
    items: list,
    run: Callable[[list], Any],
    train: bool,
    reject: Callable[[Any, str], None],
    note: Callable[[str], None],
) -> tuple[Any, list]:
    """``run(items)`` (the strategy's own aggregation): (its output, the items it used).

    Never raises. An exception is traced to one reply by leaving each out in turn: the first
    subset that aggregates cleanly is used and the left-out item is ``reject``-ed with the error.
    A training aggregate (or the optimizer state it leaves) with NaN/Inf is dropped, the strategy
    state restored and a ``note`` made; so is a strategy that aggregated nothing. On failure the
    output is ``(None, None)`` for training and ``None`` for evaluation.
    """
    saved = snapshot(strategy)
    empty = (None, None) if train else None
    try:
        out = run(items)
    except Exception as exc:  # any strategy error: never end the run
        restore(strategy, saved)
        out, culprit = _FAILED, None
        for i, item in enumerate(items if len(items) > 1 else []):
            rest = items[:i] + items[i + 1 :]
            try:
                out = run(rest)
            except Exception:  # noqa: BLE001 - still failing without this item
                restore(strategy, saved)
                continue
            culprit, items = item, rest
            break
        if culprit is None and len(items) == 1:
            culprit = items[0]
        if culprit is not None:
            reject(culprit, f"aggregation failed with this reply ({type(exc).__name__}: {exc})")
        if out is _FAILED:
            note(f"{'training' if train else 'evaluation'} aggregation failed, dropped: {exc}")
            return empty, []
    if train:
        arrays = out[0]
        why = non_finite(wire.from_record(arrays) if arrays is not None else None, strategy)
        if why:
            restore(strategy, saved)
            note(f"aggregate dropped, global model and optimizer state kept: {why}")
            return empty, []
        if arrays is None:
            note(f"{type(strategy).__name__} aggregated nothing from {len(items)} replies")
            return empty, []
    return out, items
