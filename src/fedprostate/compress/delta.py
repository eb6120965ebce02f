"""The flat delta: what crosses the wire in each direction, as plain numpy (no Flower).

Uplink (client → server): with a lossy codec the client sends its *update relative to the global
it received*; the server rebuilds full tensors (reference + decoded update) before any strategy
sees them, so FedAdam's pseudo-gradient stays right. fp32 sends the tensors themselves.
Downlink (server → client): the global tensors, encoded absolutely (clients hold no state between
rounds); every client and the server decode the same bytes, so they share one reference.

Lossy codecs encode one flat vector holding every tensor (sorted by name): one set of arrays on
the wire instead of one per tensor, so headers and key names don't eat the savings, and top-k
picks the largest entries of the whole update. The receiver splits it by the known shapes. With
error feedback (``compress.error_feedback``) the residual of earlier rounds is added before
encoding and what the codec dropped this time becomes the new residual.
"""

from __future__ import annotations

import numpy as np

from fedprostate.compress.codecs import CodecSpec, decode, encode
from fedprostate.compress.error_feedback import ErrorFeedback

Tensors = dict[str, np.ndarray]


def is_raw(spec: CodecSpec) -> bool:
    return str(spec) == "fp32"


FLAT = "all"


def flatten(tensors: Tensors) -> np.ndarray:
    return np.concatenate([np.asarray(tensors[k], np.float32).ravel() for k in sorted(tensors)])


def unflatten(vector: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> Tensors:
    out, offset = {}, 0
    for name in sorted(shapes):
        size = int(np.prod(shapes[name], dtype=np.int64))
        out[name] = vector[offset : offset + size].reshape(shapes[name]).astype(np.float32)
        offset += size
    if offset != vector.size:
        raise ValueError(f"flat update has {vector.size} values, the model expects {offset}")
    return out


def _flat_shape(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int]]:
    return {FLAT: (int(sum(np.prod(s, dtype=np.int64) for s in shapes.values())),)}


def pack_downlink(global_tensors: Tensors, spec: CodecSpec, rng: np.random.Generator) -> Tensors:
    if is_raw(spec):
        return {k: np.asarray(v, dtype=np.float32) for k, v in global_tensors.items()}
    return encode({FLAT: flatten(global_tensors)}, spec, rng)


def unpack_downlink(wire: Tensors, spec: CodecSpec, shapes: dict[str, tuple[int, ...]]) -> Tensors:
    if is_raw(spec):
        return {k: np.asarray(v, dtype=np.float32) for k, v in wire.items()}
    return unflatten(decode(wire, spec, _flat_shape(shapes))[FLAT], shapes)


def pack_uplink(
    current: Tensors,
    reference: Tensors,
    spec: CodecSpec,
    rng: np.random.Generator,
    feedback: ErrorFeedback | None = None,
) -> Tensors:
    """Encode what a client sends: its update relative to ``reference`` (the global it received).

    With error feedback the residual of earlier rounds is added before encoding and what the codec
    dropped this time becomes the new residual.
    """
    if is_raw(spec):
        return {k: np.asarray(v, dtype=np.float32) for k, v in current.items()}
    update = {FLAT: flatten(current) - flatten(reference)}
    if feedback is not None:
        update = feedback.compensate(update)
    wire = encode(update, spec, rng)
    if feedback is not None:
        feedback.update(update, decode(wire, spec, {FLAT: update[FLAT].shape}))
    return wire


def unpack_uplink(wire: Tensors, spec: CodecSpec, reference: Tensors) -> Tensors:
    """Full tensors the strategy aggregates: reference + decoded update."""
    if is_raw(spec):
        return {k: np.asarray(v, dtype=np.float32) for k, v in wire.items()}
    shapes = {k: tuple(v.shape) for k, v in reference.items()}
    delta = decode(wire, spec, _flat_shape(shapes))[FLAT]
    return unflatten(flatten(reference) + delta, shapes)
