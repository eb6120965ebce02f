"""Tensors ↔ Flower ArrayRecords, and the checks a decoded reply must pass.

What the tensors are (full tensors or a codec's flat delta) is ``fedprostate.compress.delta``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

REPORT_KEY = "report"  # ConfigRecord in each reply: site name and codec (no patient data)

Tensors = dict[str, np.ndarray]


def to_record(arrays: Tensors) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> Tensors:
    return {k: v.numpy() for k, v in record.items()}


def check_tensors(received: Tensors, expected: dict[str, tuple[int, ...]]) -> str | None:
    """Why a decoded reply is unusable (missing/extra keys, shape, dtype, NaN/Inf), or None."""
    missing = sorted(set(expected) - set(received))
    extra = sorted(set(received) - set(expected))
    if missing:
        return f"missing tensors {missing[:3]}{'…' if len(missing) > 3 else ''}"
    if extra:
        return f"unexpected tensors {extra[:3]}{'…' if len(extra) > 3 else ''}"
    for name, shape in expected.items():
        arr = received[name]
        if tuple(arr.shape) != tuple(shape):
            return f"tensor {name} has shape {tuple(arr.shape)}, expected {tuple(shape)}"
        if arr.dtype != np.float32:
            return f"tensor {name} has dtype {arr.dtype}, expected float32"
        if not np.isfinite(arr).all():
            return f"tensor {name} contains NaN or Inf"
    return None
