"""Uniform symmetric quantization with per-tensor, per-row or per-block scales.

For b bits the codes are the integers in [-qmax, qmax] with qmax = 2**(b-1) - 1 (int8: ±127,
int4: ±7, int2: ternary {-1, 0, 1}), and a group's scale is max|x| / qmax, rounded *up* to the
next bfloat16 and sent as its uint16 bit pattern (2 bytes per group). bfloat16 rather than
float16 because updates can be tiny (LoRA deltas of 1e-7 and below): float16 underflows there,
bfloat16 has float32's range. With the scale s actually on the wire:

- round to nearest:   |x - s·q| ≤ s/2
- stochastic rounding: q = floor(x/s) + Bernoulli(frac(x/s)), so E[s·q] = x and |x - s·q| < s.
"""

from __future__ import annotations

import numpy as np

from .packing import bf16_bits_ceil, bf16_bits_to_float32

GRANULARITIES = ("block", "row", "tensor")


def qmax_for_bits(bits: int) -> int:
    if bits not in (2, 4, 8):
        raise ValueError(f"integer quantization supports 2, 4 or 8 bits, got {bits}")
    return (1 << (bits - 1)) - 1


def group_count(size: int, shape: tuple[int, ...], per: str, block: int | None) -> int:
    """How many scales a tensor of `size` elements (and `shape`) gets."""
    if size == 0:
        return 0
    if per == "tensor":
        return 1
    if per == "row":
        return shape[0] if len(shape) >= 2 else 1
    if per == "block":
        if not block or block < 1:
            raise ValueError(f"per-block quantization needs block ≥ 1, got {block}")
        return -(-size // block)
    raise ValueError(f"unknown scale granularity {per!r}; expected one of {GRANULARITIES}")


def _grouped(flat: np.ndarray, groups: int) -> np.ndarray:
    """View `flat` as [groups, group_size], zero-padding the tail (only blocks ever pad)."""
    if groups == 0:
        return flat.reshape(0, 0)
    width = -(-flat.size // groups)
    padded = np.zeros(groups * width, dtype=np.float32)
    padded[: flat.size] = flat
    return padded.reshape(groups, width)


def quantize(
    values: np.ndarray,
    bits: int,
    per: str,
    block: int | None,
    stochastic: bool,
    rng: np.random.Generator | None,
    shape: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize `values` (any shape; `shape` decides the rows for per="row").

    Returns (codes int8 [size], scales as bfloat16 bit patterns uint16 [groups]).
    """
    if stochastic and rng is None:
        raise ValueError("stochastic rounding needs an explicit np.random.Generator (rng)")
    qmax = qmax_for_bits(bits)
    shape = tuple(np.shape(values)) if shape is None else tuple(shape)
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    groups = group_count(flat.size, shape, per, block)
    grid = _grouped(flat, groups)
    if grid.size == 0:
        return np.zeros(0, dtype=np.int8), np.zeros(groups, dtype=np.uint16)

    scale_bits = bf16_bits_ceil(np.abs(grid).max(axis=1) / np.float32(qmax))
    scales = bf16_bits_to_float32(scale_bits)
    # An all-zero group has scale 0: divide by 1 instead, its codes are 0 either way.
    safe = np.where(scales > 0, scales, np.float32(1.0))[:, None]
    scaled = grid / safe
    if stochastic:
        floor = np.floor(scaled)
        codes = floor + (rng.random(scaled.shape, dtype=np.float32) < (scaled - floor))
    else:
        codes = np.rint(scaled)
    # float32 rounding can push |x|/s a hair over qmax; clipping there moves nothing measurable.
    codes = np.clip(codes, -qmax, qmax).astype(np.int8)
    return codes.reshape(-1)[: flat.size], scale_bits


def dequantize(
    codes: np.ndarray,
    scale_bits: np.ndarray,
    size: int,
    shape: tuple[int, ...],
    per: str,
    block: int | None,
) -> np.ndarray:
    """Inverse of `quantize`: float32 values, flat [size]."""
    groups = group_count(size, shape, per, block)
    if scale_bits.shape != (groups,):
        raise ValueError(f"expected {groups} scales, the wire holds {scale_bits.shape[0]}")
    if codes.size != size:
        raise ValueError(f"expected {size} codes, the wire holds {codes.size}")
    if size == 0:
        return np.zeros(0, dtype=np.float32)
    scales = bf16_bits_to_float32(scale_bits)
    grid = _grouped(codes.astype(np.float32), groups)
    return (grid * scales[:, None]).reshape(-1)[:size]


def group_scales_per_element(
    scale_bits: np.ndarray, size: int, shape: tuple[int, ...], per: str, block: int | None
) -> np.ndarray:
    """Each element's scale (float32 [size]); for error-bound checks and diagnostics."""
    groups = group_count(size, shape, per, block)
    if size == 0:
        return np.zeros(0, dtype=np.float32)
    width = -(-size // groups)
    return np.repeat(bf16_bits_to_float32(scale_bits), width)[:size]
