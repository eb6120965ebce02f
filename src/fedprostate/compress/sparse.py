"""Top-k sparsification: keep the k largest-magnitude entries of a tensor, drop the rest.

Which entries survive travels either as sorted indices (smallest unsigned dtype that fits) or as a
packed bitmap (n/8 bytes) — whichever is fewer bytes for this tensor. At 10 % density a bitmap
costs 1.25 bytes per kept value against 2 bytes for uint16 indices.
"""

from __future__ import annotations

import math

import numpy as np

from .packing import smallest_uint_dtype


def topk_count(size: int, fraction: float) -> int:
    """k = ceil(fraction · size), at least 1 for a non-empty tensor."""
    if size == 0:
        return 0
    return min(size, max(1, math.ceil(fraction * size)))


def topk_select(flat: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted (ascending) positions of the k largest |values| of a 1-D array (ties: any)."""
    k = topk_count(flat.size, fraction)
    if k == flat.size:
        return np.arange(flat.size, dtype=np.int64)
    chosen = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
    return np.sort(chosen)


def encode_support(positions: np.ndarray, size: int) -> tuple[str, np.ndarray]:
    """('idx', indices) or ('mask', packed bitmap), whichever is smaller on the wire."""
    index_dtype = smallest_uint_dtype(max(size - 1, 0))
    index_bytes = positions.size * index_dtype.itemsize
    mask_bytes = -(-size // 8)
    if mask_bytes < index_bytes:
        bitmap = np.zeros(size, dtype=bool)
        bitmap[positions] = True
        return "mask", np.packbits(bitmap, bitorder="little")
    return "idx", positions.astype(index_dtype)


def decode_support(kind: str, array: np.ndarray, size: int) -> np.ndarray:
    """Positions (int64, ascending) back from `encode_support`'s output, validated."""
    array = np.asarray(array)
    if kind == "mask":
        if array.dtype != np.uint8 or array.shape != (-(-size // 8),):
            raise ValueError(
                f"top-k bitmap for {size} values must be uint8 [{-(-size // 8)}], "
                f"got {array.dtype} {array.shape}"
            )
        bitmap = np.unpackbits(array, count=size, bitorder="little").astype(bool)
        return np.flatnonzero(bitmap)
    if kind == "idx":
        if array.ndim != 1 or array.dtype.kind != "u":
            raise ValueError(f"top-k indices must be 1-D unsigned, got {array.dtype} {array.shape}")
        positions = array.astype(np.int64)
        if positions.size and (positions.max() >= size or np.any(np.diff(positions) <= 0)):
            raise ValueError(f"top-k indices must be strictly increasing and < {size}")
        return positions
    raise ValueError(f"unknown top-k support kind {kind!r}")


def scatter(positions: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Dense float32 [size] with `values` at `positions`, zero elsewhere."""
    if positions.size != values.size:
        raise ValueError(f"{positions.size} top-k positions but {values.size} values")
    dense = np.zeros(size, dtype=np.float32)
    dense[positions] = values
    return dense
