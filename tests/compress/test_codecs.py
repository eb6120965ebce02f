"""Codec-level tests for fedprostate.compress (issue 7 §1 and §4): pure numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedprostate.compress import delta
from fedprostate.compress.codecs import (
    CodecSpec,
    decode,
    encode,
)
from fedprostate.compress.packing import (
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    pack_codes,
    smallest_uint_dtype,
    unpack_codes,
)
from fedprostate.compress.quant import group_count, group_scales_per_element

INT_CODECS = [
    "int8",
    "int8:per=row",
    "int8:per=tensor",
    "int4:block=64",
    "int4:block=7",
    "int4:per=row",
    "int2:block=32",
    "int2:per=tensor",
]
ALL_CODECS = [
    "fp32",
    "fp16",
    "bf16",
    *INT_CODECS,
    *(c + ":stochastic" for c in INT_CODECS),
    "topk:0.1",
    "topk:0.1+fp16",
    "topk:0.05+int4:block=64:stochastic",
    "topk:0.3+int2:block=16",
]


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "lora_A": rng.normal(0, 0.02, size=(8, 96)).astype(np.float32),
        "lora_B": rng.normal(0, 1e-4, size=(288, 8)).astype(np.float32),  # tiny, like deltas
        "head.bias": rng.normal(size=(3,)).astype(np.float32),
        "odd": rng.uniform(-5, 5, size=(7, 13, 3)).astype(np.float32),
    }


def _shapes(tensors):
    return {name: tensor.shape for name, tensor in tensors.items()}


# --- packing and bit patterns ----------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("count", [0, 1, 2, 3, 5, 7, 1001])
def test_packing_is_exact_including_odd_lengths(bits, count):
    rng = np.random.default_rng(count * 10 + bits)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = rng.integers(low, high + 1, size=count).astype(np.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8
    assert packed.nbytes == math.ceil(count * bits / 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits, count), codes)


def test_packing_rejects_out_of_range_and_wrong_length():
    with pytest.raises(ValueError, match="out of range"):
        pack_codes(np.array([8], dtype=np.int8), 4)
    with pytest.raises(ValueError, match="need 2 bytes"):
        unpack_codes(np.zeros(3, dtype=np.uint8), 4, 4)


def test_bf16_bits_round_to_nearest_even():
    values = np.array([1.0, -2.5, 3.140625, 2.0**-100, 2.0**100, 0.0], dtype=np.float32)
    back = bf16_bits_to_float32(float32_to_bf16_bits(values))
    np.testing.assert_array_equal(back, values)  # all exactly representable in bfloat16
    # 1 + 2^-8 is exactly halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1.0).
    halfway = np.array([1 + 2**-8, 1 + 3 * 2**-8], dtype=np.float32)
    np.testing.assert_array_equal(
        bf16_bits_to_float32(float32_to_bf16_bits(halfway)), [1.0, 1 + 2**-6]
    )


def test_smallest_uint_dtype():
    assert [smallest_uint_dtype(v) for v in (0, 255, 256, 65535, 65536)] == [
        np.uint8,
        np.uint8,
        np.uint16,
        np.uint16,
        np.uint32,
    ]


# --- round-trip error bounds -----------------------------------------------------------------


def _element_scales(wire, spec, name, shape):
    size = int(np.prod(shape))
    return group_scales_per_element(wire[f"{name}|scale"], size, shape, spec.per, spec.block)


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("text", INT_CODECS)
def test_integer_codecs_error_bounds(text, stochastic):
    spec = CodecSpec.parse(text + (":stochastic" if stochastic else ""))
    tensors = _tensors(1)
    wire = encode(tensors, spec, np.random.default_rng(5))
    decoded = decode(wire, spec, _shapes(tensors))
    qmax = 2 ** (spec.bits - 1) - 1
    for name, x in tensors.items():
        scale = _element_scales(wire, spec, name, x.shape).reshape(x.shape)
        error = np.abs(decoded[name] - x)
        bound = scale if stochastic else scale / 2
        assert np.all(error <= bound * (1 + 1e-5)), name
        # The scale is tight: max|x| / qmax rounded up to bfloat16 (≤ 2^-7 relative).
        groups = np.abs(x).reshape(-1) / qmax
        assert np.all(scale.reshape(-1) >= groups * (1 - 1e-6)), name
        # ... and no larger than it must be, in every group (tensor, row or block): a doubled
        # per-block scale still meets the error bound, so only this catches it.
        flat = np.abs(x).reshape(-1)
        width = -(-flat.size // group_count(flat.size, x.shape, spec.per, spec.block))
        group_max = np.repeat(
            [flat[i : i + width].max() for i in range(0, flat.size, width)], width
        )
        assert np.all(scale.reshape(-1) <= group_max[: flat.size] / qmax * (1 + 2**-7) * (1 + 1e-6))
    # The bound is not vacuous: the codec really loses something.
    assert np.abs(decoded["odd"] - tensors["odd"]).max() > 0


# Half an ulp relative; float16 below 2^-14 is subnormal with absolute spacing 2^-24.
@pytest.mark.parametrize(
    ("text", "relative", "floor"), [("fp16", 2**-11, 2**-25), ("bf16", 2**-8, 0.0)]
)
def test_float_codecs_relative_error(text, relative, floor):
    tensors = _tensors(2)
    wire = encode(tensors, text)
    decoded = decode(wire, text, _shapes(tensors))
    for name, x in tensors.items():
        bound = np.maximum(np.abs(x) * relative, floor)
        assert np.all(np.abs(decoded[name] - x) <= bound), name
        assert np.any(decoded[name] != x), name  # really rounded
    assert wire_nbytes(wire) == 2 * sum(x.size for x in tensors.values())


def test_bf16_keeps_tiny_values_and_fp16_refuses_overflow():
    tiny = {"d": np.array([1e-9, -3e-12, 2e-20], dtype=np.float32)}
    decoded = decode(encode(tiny, "bf16"), "bf16", {"d": (3,)})["d"]
    np.testing.assert_allclose(decoded, tiny["d"], rtol=2**-8)
    with pytest.raises(ValueError, match="use bf16"):
        encode({"w": np.array([1e5], dtype=np.float32)}, "fp16")


def test_int_codec_handles_tiny_update_magnitudes():
    # bfloat16 scales: deltas around 1e-9 (float16 would underflow the scale to 0) still quantize.
    x = {"d": np.random.default_rng(3).normal(0, 1e-9, size=256).astype(np.float32)}
    decoded = decode(encode(x, "int8"), "int8", {"d": (256,)})["d"]
    assert np.abs(decoded - x["d"]).max() <= np.abs(x["d"]).max() / 127
    assert np.corrcoef(decoded, x["d"])[0, 1] > 0.999


def test_fp32_is_lossless():
    tensors = _tensors(3)
    decoded = decode(encode(tensors, "fp32"), "fp32", _shapes(tensors))
    for name, x in tensors.items():
        np.testing.assert_array_equal(decoded[name], x)


# --- stochastic rounding is unbiased, round-to-nearest is not --------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_stochastic_rounding_unbiased_nearest_biased(bits):
    """Values at 0.3 of a quantization step: the mean of many stochastic decodes converges to x,
    round-to-nearest is off by -0.3 steps every time (negative control)."""
    qmax = 2 ** (bits - 1) - 1
    step = 2.0**-3  # anchor qmax·step makes the scale exactly `step` (a bfloat16)
    rng = np.random.default_rng(11)
    blocks = 8
    grid = rng.integers(-qmax, qmax, size=(blocks, 64)) + 0.3
    grid[:, 0] = qmax  # anchor per block
    x = (grid * step).astype(np.float32).reshape(-1)
    probe = slice(1, None)  # the 0.3-step values (skip anchors, which are exact)
    trials = 400

    def mean_decode(text):
        draws = np.random.default_rng(12)
        total = np.zeros_like(x, dtype=np.float64)
        for _ in range(trials):
            total += decode(encode({"x": x}, text, draws), text, {"x": x.shape})["x"]
        return (total / trials).reshape(blocks, 64)[:, probe]

    truth = x.reshape(blocks, 64)[:, probe].astype(np.float64)
    # Per element, Var(decode) = step² · 0.3 · 0.7; its mean over trials has this standard error:
    standard_error = step * math.sqrt(0.21 / trials)
    stochastic_error = mean_decode(f"int{bits}:block=64:stochastic") - truth
    assert np.abs(stochastic_error).max() < 5 * standard_error
    # Pooled over all probe elements the bias must vanish to within a few pooled SEs.
    assert abs(stochastic_error.mean()) < 4 * standard_error / math.sqrt(truth.size)

    nearest_error = mean_decode(f"int{bits}:block=64") - truth
    np.testing.assert_allclose(nearest_error, -0.3 * step, rtol=1e-4)
    assert abs(nearest_error.mean()) > 50 * standard_error / math.sqrt(truth.size)


def test_stochastic_needs_rng_and_is_reproducible():
    x = {"x": np.linspace(-1, 1, 100, dtype=np.float32)}
    with pytest.raises(ValueError, match="rng"):
        encode(x, "int4:stochastic")
    first = encode(x, "int4:stochastic", np.random.default_rng(0))
    second = encode(x, "int4:stochastic", np.random.default_rng(0))
    np.testing.assert_array_equal(first["x|q"], second["x|q"])


# --- top-k -----------------------------------------------------------------------------------


def test_topk_keeps_largest_magnitudes_exactly():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 40)).astype(np.float32)
    decoded = decode(encode({"w": x}, "topk:0.05"), "topk:0.05", {"w": x.shape})["w"]
    kept = decoded != 0
    assert kept.sum() == 100
    np.testing.assert_array_equal(decoded[kept], x[kept])
    assert np.abs(x[~kept]).max() <= np.abs(x[kept]).min()


def test_topk_with_quantized_values_bounds():
    rng = np.random.default_rng(6)
    x = rng.normal(size=5000).astype(np.float32)
    spec = CodecSpec.parse("topk:0.1+int4:block=64")
    wire = encode({"w": x}, spec)
    decoded = decode(wire, spec, {"w": x.shape})["w"]
    support = np.zeros(x.size, dtype=bool)
    support[np.argsort(-np.abs(x))[:500]] = True
    scales = group_scales_per_element(wire["w|scale"], 500, (500,), "block", 64)
    assert np.all(np.abs(decoded[support] - x[support]) <= scales / 2 * (1 + 1e-5))
    assert np.all(decoded[~support] == 0)


def test_topk_support_uses_smallest_encoding():
    rng = np.random.default_rng(7)
    small = rng.normal(size=200).astype(np.float32)
    assert encode({"w": small}, "topk:0.01")["w|idx"].dtype == np.uint8  # 2 indices < 25-byte mask
    mid = rng.normal(size=20_000).astype(np.float32)
    assert encode({"w": mid}, "topk:0.01")["w|idx"].dtype == np.uint16  # 400 B < 2500 B mask
    big = rng.normal(size=70_000).astype(np.float32)
    assert encode({"w": big}, "topk:0.001")["w|idx"].dtype == np.uint32
    dense = encode({"w": mid}, "topk:0.1")  # 2000 uint16 indices = 4000 B > 2500 B bitmap
    assert "w|mask" in dense and dense["w|mask"].nbytes == 2500
    for wire, x in ((dense, mid), (encode({"w": big}, "topk:0.001"), big)):
        spec = "topk:0.1" if "w|mask" in wire else "topk:0.001"
        decoded = decode(wire, spec, {"w": x.shape})["w"]
        assert np.count_nonzero(decoded) == math.ceil(float(spec[5:]) * x.size)


# --- wire sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 63, 64, 1001, 10_000])
def test_wire_bytes_match_formulas(n):
    x = {"w": np.random.default_rng(n).normal(size=n).astype(np.float32)}
    scales = 2 * math.ceil(n / 64)
    assert wire_nbytes(encode(x, "fp32")) == 4 * n
    assert wire_nbytes(encode(x, "fp16")) == 2 * n
    assert wire_nbytes(encode(x, "bf16")) == 2 * n
    assert wire_nbytes(encode(x, "int8")) == n + scales
    assert wire_nbytes(encode(x, "int4:block=64")) == math.ceil(n / 2) + scales
    assert wire_nbytes(encode(x, "int2:block=64")) == math.ceil(n / 4) + scales
    assert wire_nbytes(encode(x, "int4:per=tensor")) == math.ceil(n / 2) + 2


def swin_t_lora_shapes(method: str = "lora") -> dict[str, tuple[int, ...]]:
    """The communicated tensors of the real Swin-T (64 px) with LoRA r=8 (or FFA-LoRA), read from
    the model the runs build, not written by hand."""
    from fedprostate.config import FinetuneConfig
    from fedprostate.models.backbones import create_backbone
    from fedprostate.models.finetune import build_finetune, get_communicated

    backbone = create_backbone("swin_tiny", crop=64, num_classes=2, in_chans=3)
    ft = build_finetune(backbone, "swin_tiny", FinetuneConfig(method=method, lora_r=8))
    return {k: tuple(v.shape) for k, v in get_communicated(ft).items()}


def test_swin_lora_wire_bytes():
    shapes = swin_t_lora_shapes()
    n = sum(math.prod(s) for s in shapes.values())
    assert n == 213_506
    rng = np.random.default_rng(8)
    x = {k: rng.normal(0, 1e-3, size=s).astype(np.float32) for k, s in shapes.items()}
    scales = sum(2 * math.ceil(math.prod(s) / 64) for s in shapes.values())
    packed4 = sum(math.ceil(math.prod(s) / 2) for s in shapes.values())
    assert wire_nbytes(encode(x, "fp32")) == 4 * n
    assert wire_nbytes(encode(x, "int4:block=64")) == packed4 + scales
    assert packed4 - n / 2 <= len(shapes)  # only odd-length tensors round up
    ffa = swin_t_lora_shapes("ffa-lora")  # A frozen: B matrices and the head travel
    assert sum(math.prod(s) for s in ffa.values()) == 142_850


# --- edge cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ALL_CODECS)
def test_empty_zero_constant_and_scalar_tensors(text):
    tensors = {
        "empty": np.zeros((0, 4), dtype=np.float32),
        "zero": np.zeros((5, 9), dtype=np.float32),
        "const": np.full((3, 70), -0.3, dtype=np.float32),
        "scalar": np.array(2.5, dtype=np.float32),
        "f64": np.arange(6, dtype=np.float64).reshape(2, 3),
    }
    with np.errstate(all="raise"):  # no division by zero, no invalid values
        wire = encode(tensors, text, np.random.default_rng(0))
        decoded = decode(wire, text, _shapes(tensors))
    for name, x in tensors.items():
        assert decoded[name].dtype == np.float32, name
        assert decoded[name].shape == x.shape, name
        assert np.all(np.isfinite(decoded[name])), name
    assert np.all(decoded["zero"] == 0)
    if "topk" not in text:
        # Nearest: |x|/s is qmax·(1 - ≤2^-7), rounds to qmax. Stochastic: error < one step.
        spec = CodecSpec.parse(text)
        tol = 2**-7 if not spec.stochastic else 1.01 / (2 ** (spec.bits - 1) - 1)
        np.testing.assert_allclose(decoded["const"], -0.3, rtol=tol)
        np.testing.assert_allclose(decoded["scalar"], 2.5, rtol=tol)


def test_rejects_non_finite_and_bad_names():
    with pytest.raises(ValueError, match="'w'.*NaN or inf"):
        encode({"w": np.array([1.0, np.nan], dtype=np.float32)}, "int8")
    with pytest.raises(ValueError, match="must not contain"):
        encode({"a|b": np.zeros(2, dtype=np.float32)}, "fp32")


def test_decode_rejects_inconsistent_wire():
    x = {"w": np.ones((4, 4), dtype=np.float32)}
    wire = encode(x, "int4")
    with pytest.raises(ValueError, match="lacks"):
        decode({"w|q": wire["w|q"]}, "int4", {"w": (4, 4)})
    with pytest.raises(ValueError, match="no known tensor"):
        decode({**wire, "v|q": wire["w|q"]}, "int4", {"w": (4, 4)})
    with pytest.raises(ValueError, match="bytes"):
        decode(wire, "int4", {"w": (4, 8)})  # wrong shape: packed length disagrees
    with pytest.raises(ValueError, match="float16"):
        decode(encode(x, "fp32"), "fp16", {"w": (4, 4)})


# --- delta helpers --------------------------------------------------------------------------


def test_fp32_update_sends_full_tensors():
    reference = _tensors(9)
    current = {k: v + 0.01 for k, v in reference.items()}
    spec = CodecSpec.parse("fp32")
    sent = delta.pack_uplink(current, reference, spec, np.random.default_rng(0))
    for name, x in current.items():
        np.testing.assert_array_equal(sent[name], x)
    rebuilt = delta.unpack_uplink(sent, spec, reference)
    for name, x in current.items():
        np.testing.assert_array_equal(rebuilt[name], x)


def test_lossy_update_is_delta_coded():
    rng = np.random.default_rng(10)
    reference = {"w": rng.normal(5.0, 1.0, size=(16, 64)).astype(np.float32)}
    step = rng.normal(0, 1e-3, size=(16, 64)).astype(np.float32)
    current = {"w": reference["w"] + step}
    spec = CodecSpec.parse("int4")
    sent = delta.pack_uplink(current, reference, spec, np.random.default_rng(0))
    rebuilt = delta.unpack_uplink(sent, spec, reference)["w"]
    assert rebuilt.dtype == np.float32
    # Error relative to the delta's scale (≈ max|delta|/7/2), far below quantizing the weights.
    assert np.abs(rebuilt - current["w"]).max() <= np.abs(step).max() / 7 / 2 * 1.01 + 1e-6
    direct = decode(encode(current, "int4"), "int4", {"w": (16, 64)})["w"]
    assert np.abs(direct - current["w"]).max() > 10 * np.abs(rebuilt - current["w"]).max()


def test_flat_delta_checks_sizes():
    with pytest.raises(ValueError, match="expects"):
        delta.unflatten(np.zeros(5, np.float32), {"w": (2, 2)})


def wire_nbytes(wire) -> int:
    return int(sum(np.asarray(v).nbytes for v in wire.values()))
