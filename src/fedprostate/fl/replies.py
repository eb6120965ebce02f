"""What a site's reply may carry, checked before any Flower strategy sees it (plain functions).

Flower's strategies require every reply of a round to carry the same metric names (else
``InconsistentMessageReplies`` ends the run) and trust ``num-examples`` blindly (a weight of 1e12
makes the global model the sender's; n = -9 in evaluation gives an AUROC of 7.1; +10/-10 divides
by zero). So metric names are whitelisted, every value must be a number, and ``num-examples``
must be a whole number >= 1, capped at the sender's registered size of the split it used.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import MetricRecord

from fedprostate.compress import delta
from fedprostate.compress.codecs import CodecSpec
from fedprostate.fl import wire

TRAIN_METRICS = frozenset({"num-examples", "train-loss", "val-auroc", "val-n", "steps"})
PRETRAIN_METRICS = frozenset({"num-examples", "train-loss", "steps"})  # self-supervised rounds
EVALUATE_METRICS = frozenset({"num-examples", "auroc", "ap", "loss"})
MAX_EXAMPLES = 10**9  # beyond any hospital; a bound even without a registered size


def metrics_problem(metrics: MetricRecord, allowed: frozenset[str]) -> str | None:
    """Why a reply's metrics are unusable (names outside the whitelist, missing, not numbers)."""
    keys = set(metrics.keys())
    extra = sorted(keys - allowed)
    if extra:
        return f"unexpected metric(s) {extra[:5]} (allowed: {sorted(allowed)})"
    missing = sorted(allowed - keys)
    if missing:
        return f"missing metric(s) {missing}"
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"metric {key!r} is not a number ({type(value).__name__})"
        if math.isinf(value):
            return f"metric {key!r} is infinite"
    return None


def checked_count(value, cap: int | None) -> tuple[int | None, str, bool]:
    """(usable num-examples, reason if unusable, whether it was capped at ``cap``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"bad num-examples {value!r}", False
    if not math.isfinite(value) or value != int(value) or value < 1:
        return None, f"bad num-examples {value!r} (a whole number >= 1 is required)", False
    limit = MAX_EXAMPLES if cap is None else min(int(cap), MAX_EXAMPLES)
    if value > limit:
        return limit, "", True
    return int(value), "", False


def decode_update(
    received: dict[str, np.ndarray],
    codec_text: str,
    shapes: dict[str, tuple[int, ...]],
    reference: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray] | None, str]:
    """(full tensors, "") from a reply's wire tensors, or (None, why they are unusable):
    missing/extra tensors, wrong shape or dtype, NaN/Inf, undecodable codec data."""
    try:
        spec = CodecSpec.parse(codec_text)
        if delta.is_raw(spec):
            reason = wire.check_tensors(received, shapes)
            if reason:
                return None, reason
        decoded = delta.unpack_uplink(received, spec, reference)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return None, f"undecodable {codec_text} update: {exc}"
    decoded = {k: np.asarray(v) for k, v in decoded.items()}
    reason = wire.check_tensors(decoded, shapes)
    return (None, reason) if reason else (decoded, "")
