"""What crosses the wire: tensors ↔ Flower ArrayRecords, with a codec in each direction.

Uplink (client → server): with a lossy codec the client sends its *update relative to the global
it received*; the server rebuilds full tensors (reference + decoded update) before Flower's
strategy sees them, so FedAdam's pseudo-gradient stays right. fp32 sends the tensors themselves.
Downlink (server → client): the global tensors, encoded absolutely (clients hold no state between
rounds); every client and the server decode the same bytes, so they share one reference.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from fedprostate.compress.codecs import CodecSpec, decode, decode_update, encode, encode_update
from fedprostate.compress.error_feedback import ErrorFeedback

Tensors = dict[str, np.ndarray]


def to_record(arrays: Tensors) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> Tensors:
    return {k: v.numpy() for k, v in record.items()}


def is_raw(spec: CodecSpec) -> bool:
    return str(spec) == "fp32"


def pack_downlink(global_tensors: Tensors, spec: CodecSpec, rng: np.random.Generator) -> Tensors:
    if is_raw(spec):
        return {k: np.asarray(v, dtype=np.float32) for k, v in global_tensors.items()}
    return encode(global_tensors, spec, rng)


def unpack_downlink(wire: Tensors, spec: CodecSpec, shapes: dict[str, tuple[int, ...]]) -> Tensors:
    if is_raw(spec):
        return {k: np.asarray(v, dtype=np.float32) for k, v in wire.items()}
    return decode(wire, spec, shapes)


def pack_uplink(
    current: Tensors,
    reference: Tensors,
    spec: CodecSpec,
    rng: np.random.Generator,
    feedback: ErrorFeedback | None = None,
) -> Tensors:
    """Encode what a client sends; with error feedback the residual of earlier rounds is added."""
    if is_raw(spec):
        return {k: np.asarray(v, dtype=np.float32) for k, v in current.items()}
    if feedback is None:
        return encode_update(current, reference, spec, rng)
    delta = {k: current[k].astype(np.float32) - reference[k].astype(np.float32) for k in current}
    compensated = feedback.compensate(delta)
    zeros = {k: np.zeros_like(v) for k, v in compensated.items()}
    wire = encode_update(compensated, zeros, spec, rng)
    feedback.update(compensated, decode_update(wire, spec, zeros))
    return wire


def unpack_uplink(wire: Tensors, spec: CodecSpec, reference: Tensors) -> Tensors:
    if is_raw(spec):
        return {k: np.asarray(v, dtype=np.float32) for k, v in wire.items()}
    return decode_update(wire, spec, reference)


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
