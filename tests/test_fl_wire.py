"""What crosses the wire: codecs on both directions, full-tensor rebuild, byte-exact sizes."""

import numpy as np
import pytest

from fedprostate.compress import delta
from fedprostate.compress.codecs import CodecSpec
from fedprostate.compress.error_feedback import ErrorFeedback
from fedprostate.config import FinetuneConfig
from fedprostate.fl import wire
from fedprostate.models.backbones import create_backbone
from fedprostate.models.finetune import build_finetune, get_communicated


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
    b = delta.unpack_downlink(wire.from_record(wire.to_record(packed)), spec, shapes)
    assert all(np.array_equal(a[k], b[k]) for k in t)


def test_check_tensors_names_each_problem():
    t = _tensors()
    shapes = {k: v.shape for k, v in t.items()}
    assert wire.check_tensors(t, shapes) is None
    assert "missing" in wire.check_tensors({k: t[k] for k in list(t)[:2]}, shapes)
    assert "unexpected" in wire.check_tensors({**t, "x": t["head.weight"]}, shapes)
    assert "shape" in wire.check_tensors({**t, "head.weight": t["head.weight"].T.copy()}, shapes)
    assert "dtype" in wire.check_tensors(
        {**t, "head.weight": t["head.weight"].astype(np.float64)}, shapes
    )
    bad = t["head.weight"].copy()
    bad[0, 0] = np.nan
    assert "NaN" in wire.check_tensors({**t, "head.weight": bad}, shapes)


@pytest.mark.parametrize("method, expected_params", [("lora", 213_506), ("full", None)])
def test_bytes_on_the_wire_match_tensor_sizes_for_swin_t(method, expected_params):
    """Swin-T at 64 px: LoRA r=8 ≈ 0.85 MB, full fine-tuning ≈ 110 MB, counted as Flower serializes."""
    backbone = create_backbone("swin_tiny", crop=64, num_classes=2, in_chans=3)
    ft = build_finetune(backbone, "swin_tiny", FinetuneConfig(method=method, lora_r=8))
    tensors = {k: v.detach().numpy() for k, v in get_communicated(ft).items()}
    n = sum(v.size for v in tensors.values())
    if expected_params:
        assert n == expected_params
    counted = wire.to_record(tensors).count_bytes()
    assert counted >= 4 * n
    # Overhead: the key names and a small NumPy header per tensor, nothing proportional to n.
    assert counted - 4 * n <= len(tensors) * 200
    mb = counted / 1e6
    assert (0.84 < mb < 0.87) if method == "lora" else (105 < mb < 115)


def _wire_bytes(arrays) -> int:
    """Bytes Flower counts for these arrays (data + NumPy headers + key names)."""
    return wire.to_record(arrays).count_bytes()
