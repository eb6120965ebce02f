"""Bit-level helpers for the wire format: sub-byte packing, bfloat16 bit patterns, index dtypes.

Everything here is exact and deterministic; the lossy parts of the codecs live in `quant.py` and
`sparse.py`.
"""

from __future__ import annotations

import numpy as np

PACKABLE_BITS = (2, 4)
_UINT_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack signed integer codes in [-2**(bits-1), 2**(bits-1) - 1] into a uint8 array.

    Codes are stored offset-binary (code + 2**(bits-1)), 8 // bits per byte, first code in the
    lowest bits. The last byte is zero-padded; `unpack_codes` needs the code count back.
    """
    if bits not in PACKABLE_BITS:
        raise ValueError(f"can only pack 2- or 4-bit codes, got bits={bits}")
    flat = np.asarray(codes).reshape(-1)
    offset = 1 << (bits - 1)
    if flat.size and (flat.min() < -offset or flat.max() > offset - 1):
        raise ValueError(
            f"codes out of range for {bits} bits: [{flat.min()}, {flat.max()}] "
            f"not within [{-offset}, {offset - 1}]"
        )
    per_byte = 8 // bits
    unsigned = (flat.astype(np.int16) + offset).astype(np.uint8)
    padded = np.zeros(-(-flat.size // per_byte) * per_byte, dtype=np.uint8)
    padded[: flat.size] = unsigned
    lanes = padded.reshape(-1, per_byte)
    packed = np.zeros(lanes.shape[0], dtype=np.uint8)
    for lane in range(per_byte):
        packed |= lanes[:, lane] << np.uint8(bits * lane)
    return packed


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_codes`: the first `count` codes as int8."""
    if bits not in PACKABLE_BITS:
        raise ValueError(f"can only unpack 2- or 4-bit codes, got bits={bits}")
    per_byte = 8 // bits
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise ValueError(
            f"packed codes must be a 1-D uint8 array, got {packed.dtype} {packed.shape}"
        )
    expected = -(-count // per_byte)
    if packed.size != expected:
        raise ValueError(
            f"{count} codes of {bits} bits need {expected} bytes, the wire holds {packed.size}"
        )
    shifts = (bits * np.arange(per_byte, dtype=np.uint8))[None, :]
    mask = np.uint8((1 << bits) - 1)
    unsigned = (packed[:, None] >> shifts) & mask
    return unsigned.reshape(-1)[:count].astype(np.int8) - np.int8(1 << (bits - 1))


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), round to nearest even. Inputs must be finite."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((u >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    return ((u + rounding) >> np.uint32(16)).astype(np.uint16)


def bf16_bits_ceil(values: np.ndarray) -> np.ndarray:
    """Non-negative float32 → the smallest bfloat16 ≥ value, as uint16 bit patterns.

    Used for quantization scales: rounding a scale up keeps every |x| / scale ≤ qmax, so the
    round-trip error bounds hold with respect to the scale actually on the wire.
    """
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    high = (u >> np.uint32(16)).astype(np.uint32)
    high += ((u & np.uint32(0xFFFF)) != 0).astype(np.uint32)
    return high.astype(np.uint16)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32 (exact)."""
    b = np.asarray(bits)
    if b.dtype != np.uint16:
        raise ValueError(f"bfloat16 bit patterns must be uint16, got {b.dtype}")
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def smallest_uint_dtype(max_value: int) -> np.dtype:
    """The narrowest unsigned integer dtype that holds 0..max_value."""
    for dtype in _UINT_DTYPES:
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{max_value} does not fit in 64 bits")
