"""The flat delta: codecs on both directions, full-tensor rebuild, error feedback, sizes."""

import numpy as np
import pytest

from fedprostate.compress import delta
from fedprostate.compress.codecs import CodecSpec
from fedprostate.compress.error_feedback import ErrorFeedback


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a.lora_A": rng.normal(size=(8, 96)).astype(np.float32),
        "a.lora_B": rng.normal(size=(288, 8)).astype(np.float32) * 0.01,
        "head.weight": rng.normal(size=(2, 768)).astype(np.float32),
    }


def test_fp32_is_raw_and_exact():
    t = _tensors()
    spec = CodecSpec.parse("fp32")
    wire_np = delta.pack_uplink(t, t, spec, np.random.default_rng(0))
    assert set(wire_np) == set(t)
    back = delta.unpack_uplink(wire_np, spec, t)
    assert all(np.array_equal(back[k], t[k]) for k in t)


@pytest.mark.parametrize("codec", ["fp16", "int8", "int4:block=64", "topk:0.1+int4:block=64"])
def test_lossy_uplink_rebuilds_full_tensors_near_the_truth(codec):
    reference = _tensors(0)
    rng = np.random.default_rng(1)
    current = {
        k: v + 0.01 * rng.normal(size=v.shape).astype(np.float32) for k, v in reference.items()
    }
    spec = CodecSpec.parse(codec)
    wire_np = delta.pack_uplink(current, reference, spec, np.random.default_rng(2))
    rebuilt = delta.unpack_uplink(wire_np, spec, reference)
    for k in current:
        assert rebuilt[k].dtype == np.float32 and rebuilt[k].shape == current[k].shape
        # The error is bounded by the size of the update, not of the tensor: deltas were sent.
        assert (
            np.abs(rebuilt[k] - current[k]).max() <= np.abs(current[k] - reference[k]).max() + 1e-6
        )
    assert _wire_bytes(wire_np) < _wire_bytes(current)


def test_error_feedback_carries_what_compression_dropped():
    reference = _tensors(0)
    current = {k: v + 0.01 for k, v in reference.items()}
    spec = CodecSpec.parse("topk:0.05+int4:block=64")
    ef = ErrorFeedback()
    wire_np = delta.pack_uplink(current, reference, spec, np.random.default_rng(0), ef)
    sent = delta.unpack_uplink(wire_np, spec, reference)
    residual = delta.unflatten(ef.residual[delta.FLAT], {k: v.shape for k, v in current.items()})
    assert np.abs(ef.residual[delta.FLAT]).max() > 0  # top-k 5% dropped most of the update
    for k in current:
        np.testing.assert_allclose(
            sent[k] - reference[k] + residual[k], current[k] - reference[k], atol=1e-6
        )


def test_lossy_codecs_send_one_flat_vector_so_headers_do_not_eat_the_savings():
    t = _tensors()
    spec = CodecSpec.parse("int4:block=64")
    packed = delta.pack_uplink(
        t, {k: np.zeros_like(v) for k, v in t.items()}, spec, np.random.default_rng(0)
    )
    assert {k.split("|")[0] for k in packed} == {delta.FLAT}
    n = sum(v.size for v in t.values())
    assert _wire_bytes(packed) < n / 2 + 2 * (n / 64) + 400


def test_downlink_is_decoded_identically_everywhere():
    t = _tensors()
    spec = CodecSpec.parse("int8")
    packed = delta.pack_downlink(t, spec, np.random.default_rng(0))
    shapes = {k: v.shape for k, v in t.items()}
    a = delta.unpack_downlink(packed, spec, shapes)
    b = delta.unpack_downlink({k: v.copy() for k, v in packed.items()}, spec, shapes)
    assert all(np.array_equal(a[k], b[k]) for k in t)


def _wire_bytes(arrays) -> int:
    """Payload bytes of the arrays (what the codec puts on the wire, headers aside)."""
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))
