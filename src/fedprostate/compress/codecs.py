"""Encode / decode named float32 tensors for the wire (pure numpy, no Flower, no torch).

Wire format: a flat ``dict[str, np.ndarray]`` with one or more arrays per tensor, named
``"<name>|<part>"``:

- ``|v``     float values: float32 (fp32), float16 (fp16) or uint16 bfloat16 bit patterns (bf16).
             Dense float codecs keep the tensor's shape; top-k values are 1-D.
- ``|q``     integer codes: int8 for int8; int4 / int2 packed two / four per byte (uint8).
- ``|scale`` one scale per group (block, row or tensor) as uint16 bfloat16 bit patterns, rounded
             up (see `quant.py` for why bfloat16 and not float16).
- ``|idx`` / ``|mask``  top-k support: sorted indices in the smallest unsigned dtype that fits, or
             a packed bitmap, whichever is smaller.

Shapes do not travel: `decode` takes them (the receiver knows the model). Decoded tensors are
always float32.

What the encoded tensors are (full tensors, or a flat delta to the global model with error
feedback) is decided by `delta.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .packing import (
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    pack_codes,
    unpack_codes,
)
from .quant import dequantize, quantize
from .sparse import decode_support, encode_support, scatter, topk_select
from .spec import CodecSpec

__all__ = ["CodecSpec", "decode", "encode"]

FP16_MAX = float(np.finfo(np.float16).max)
SEPARATOR = "|"


def _as_float32(name: str, tensor) -> np.ndarray:
    array = np.asarray(tensor, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"tensor {name!r} holds NaN or inf; refusing to encode it")
    return array


def _encode_values(name: str, values: np.ndarray, spec: CodecSpec, rng) -> dict[str, np.ndarray]:
    """Encode `values` (dense tensor, or flat top-k values) in the spec's value format."""
    if spec.values == "fp32":
        return {f"{name}|v": values.copy()}
    if spec.values == "fp16":
        peak = float(np.abs(values).max()) if values.size else 0.0
        if peak > FP16_MAX:
            raise ValueError(
                f"tensor {name!r} has |value| {peak:.3g} beyond float16's {FP16_MAX:.0f}; use bf16"
            )
        return {f"{name}|v": values.astype(np.float16)}
    if spec.values == "bf16":
        return {f"{name}|v": float32_to_bf16_bits(values)}
    codes, scale_bits = quantize(
        values, spec.bits, spec.per, spec.block, spec.stochastic, rng, shape=values.shape
    )
    packed = codes if spec.bits == 8 else pack_codes(codes, spec.bits)
    return {f"{name}|q": packed, f"{name}|scale": scale_bits}


def _decode_values(
    name: str, wire: Mapping[str, np.ndarray], spec: CodecSpec, shape: tuple[int, ...]
) -> np.ndarray:
    """Inverse of `_encode_values`; returns float32 of `shape`."""
    size = int(np.prod(shape, dtype=np.int64))
    if not spec.is_integer:
        array = np.asarray(wire[f"{name}|v"])
        expected = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}[spec.values]
        if array.dtype != expected or array.size != size:
            raise ValueError(
                f"tensor {name!r}: {spec.values} wire values must be {np.dtype(expected)} with "
                f"{size} elements, got {array.dtype} with {array.size}"
            )
        if spec.values == "bf16":
            array = bf16_bits_to_float32(array)
        return array.astype(np.float32).reshape(shape)
    packed = np.asarray(wire[f"{name}|q"])
    scale_bits = np.asarray(wire[f"{name}|scale"])
    if scale_bits.dtype != np.uint16:
        raise ValueError(
            f"tensor {name!r}: scales must be uint16 bfloat16 bits, got {scale_bits.dtype}"
        )
    if spec.bits == 8:
        if packed.dtype != np.int8:
            raise ValueError(f"tensor {name!r}: int8 codes must be int8, got {packed.dtype}")
        codes = packed.reshape(-1)
    else:
        codes = unpack_codes(packed, spec.bits, size)
    flat = dequantize(codes, scale_bits, size, shape, spec.per, spec.block)
    return flat.reshape(shape)


def encode(
    tensors: Mapping[str, np.ndarray],
    spec: CodecSpec | str,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Encode named tensors into wire arrays. `rng` is required for stochastic rounding."""
    spec = CodecSpec.parse(spec)
    wire: dict[str, np.ndarray] = {}
    for name, tensor in tensors.items():
        if SEPARATOR in name:
            raise ValueError(f"tensor name {name!r} must not contain {SEPARATOR!r}")
        array = _as_float32(name, tensor)
        if spec.topk is None:
            wire.update(_encode_values(name, array, spec, rng))
            continue
        flat = array.reshape(-1)
        positions = topk_select(flat, spec.topk)
        kind, support = encode_support(positions, flat.size)
        wire[f"{name}|{kind}"] = support
        wire.update(_encode_values(name, flat[positions], spec, rng))
    return wire


def _expected_parts(spec: CodecSpec) -> tuple[str, ...]:
    return ("q", "scale") if spec.is_integer else ("v",)


def decode(
    wire: Mapping[str, np.ndarray],
    spec: CodecSpec | str,
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """Decode wire arrays back into float32 tensors of the given shapes (keys of `shapes`)."""
    spec = CodecSpec.parse(spec)
    decoded: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for name, shape in shapes.items():
        shape = tuple(int(d) for d in shape)
        parts = [f"{name}|{part}" for part in _expected_parts(spec)]
        if spec.topk is not None:
            kinds = [k for k in ("idx", "mask") if f"{name}|{k}" in wire]
            if len(kinds) != 1:
                raise ValueError(f"tensor {name!r}: expected exactly one of '|idx' or '|mask'")
            parts.append(f"{name}|{kinds[0]}")
        missing = [key for key in parts if key not in wire]
        if missing:
            raise ValueError(f"wire lacks {missing} for tensor {name!r} (codec {spec})")
        used.update(parts)
        if spec.topk is None:
            decoded[name] = _decode_values(name, wire, spec, shape)
            continue
        size = int(np.prod(shape, dtype=np.int64))
        positions = decode_support(kinds[0], wire[f"{name}|{kinds[0]}"], size)
        values = _decode_values(name, wire, spec, (positions.size,))
        decoded[name] = scatter(positions, values, size).reshape(shape)
    extra = sorted(set(wire) - used)
    if extra:
        raise ValueError(f"wire holds arrays for no known tensor: {extra[:5]} (codec {spec})")
    return decoded
