"""Flower records: what a decoded reply must be, and the bytes Flower counts for real models."""

import numpy as np
import pytest

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
    """Swin-T at 64 px: LoRA r=8 ≈ 0.85 MB, full fine-tuning ≈ 110 MB, as
    ``ArrayRecord.count_bytes()`` counts them: each tensor's .npy bytes (a 128-byte header + 4
    bytes a value) plus its name; the protobuf message framing around them is not counted."""
    backbone = create_backbone("swin_tiny", crop=64, num_classes=2, in_chans=3)
    ft = build_finetune(backbone, "swin_tiny", FinetuneConfig(method=method, lora_r=8))
    tensors = {k: v.detach().numpy() for k, v in get_communicated(ft).items()}
    n = sum(v.size for v in tensors.values())
    if expected_params:
        assert n == expected_params
    counted = wire.to_record(tensors).count_bytes()
    assert counted == 4 * n + sum(128 + len(k) for k in tensors)
    mb = counted / 1e6
    assert (0.84 < mb < 0.87) if method == "lora" else (105 < mb < 115)
