"""Backbone geometry and foundation-weight loading (keys, shapes, channels, crop changes, hashes)."""

import json

import pytest
import torch

from fedprostate.models.backbones import create_backbone, swin_window, vit_patch
from fedprostate.models.foundation import (
    FoundationError,
    backbone_sha256,
    init_from_foundation,
    load_foundation,
    save_checkpoint,
)


def seeded(arch, crop, seed=0, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_backbone(arch, crop=crop, **kwargs).eval()


def x_batch(crop, channels=3):
    return torch.randn(2, channels, crop, crop, generator=torch.Generator().manual_seed(3))


def test_token_grids_are_comparable_at_64px():
    assert swin_window(64) == 4 and swin_window(224) == 7
    assert vit_patch(64) == 8 and vit_patch(224) == 16
    swin = create_backbone("swin_test", crop=64)
    assert swin.patch_embed(x_batch(64)).shape[1:3] == (16, 16)
    assert [b.window_size for b in swin.layers[0].blocks] == [(4, 4), (4, 4)]
    assert tuple(create_backbone("vit_test", crop=64).patch_embed.grid_size) == (8, 8)
    with pytest.raises(ValueError, match="multiple of 32"):
        create_backbone("swin_test", crop=48)
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("convnext")


def test_save_and_load_round_trip_with_metadata(tmp_path):
    model = seeded("swin_test", 32)
    path = tmp_path / "ckpt.safetensors"
    meta = save_checkpoint(path, model, {"arch": "swin_test", "crop": 32, "normalization": "z"})
    on_disk = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert on_disk == meta
    assert on_disk["channels"] == ["t2w", "adc", "hbv"]
    assert on_disk["sha256"] == backbone_sha256(model)
    fresh = seeded("swin_test", 32, seed=9)
    assert not torch.allclose(fresh(x_batch(32)), model(x_batch(32)))
    assert init_from_foundation(fresh, path, "swin_test", 32) == on_disk["sha256"]
    assert torch.equal(fresh(x_batch(32)), model(x_batch(32)))
    with pytest.raises(FoundationError, match="vit_test"):
        load_foundation(path, "vit_test", 32)
    with pytest.raises(ValueError, match="normalization"):
        save_checkpoint(tmp_path / "x.safetensors", model, {"arch": "swin_test", "crop": 32})


def test_sha256_sees_every_weight():
    model = seeded("vit_test", 32)
    digest = backbone_sha256(model)
    assert backbone_sha256(model.state_dict()) == digest
    with torch.no_grad():
        model.blocks[1].mlp.fc2.weight[0, 0] += 1e-3
    assert backbone_sha256(model) != digest


def test_timm_format_pth_with_prefixes_and_foreign_head(tmp_path):
    source = seeded("vit_test", 32, num_classes=1000)
    wrapped = {"state_dict": {f"module.backbone.{k}": v for k, v in source.state_dict().items()}}
    path = tmp_path / "timm.pth"
    torch.save(wrapped, path)
    state = load_foundation(path, "vit_test", 32)
    assert "head.weight" not in state  # a 1000-class head is dropped, ours starts fresh
    assert torch.equal(state["blocks.0.attn.qkv.weight"], source.blocks[0].attn.qkv.weight)
    target = seeded("vit_test", 32, seed=4)
    init_from_foundation(target, path, "vit_test", 32)
    assert torch.equal(target.forward_features(x_batch(32)), source.forward_features(x_batch(32)))


def test_mismatched_unexpected_and_missing_keys_are_named(tmp_path):
    state = seeded("vit_test", 32).state_dict()
    bad = dict(state)
    bad["blocks.1.mlp.fc1.weight"] = torch.zeros(5, 5)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(FoundationError, match=r"blocks\.1\.mlp\.fc1\.weight.*\(5, 5\)"):
        load_foundation(tmp_path / "bad.pth", "vit_test", 32)
    extra = {**state, "decoder.weight": torch.zeros(2)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(FoundationError, match=r"decoder\.weight"):
        load_foundation(tmp_path / "extra.pth", "vit_test", 32)
    lacking = {k: v for k, v in state.items() if k != "norm.bias"}
    torch.save(lacking, tmp_path / "lacking.pth")
    with pytest.raises(FoundationError, match=r"norm\.bias"):
        load_foundation(tmp_path / "lacking.pth", "vit_test", 32)


@pytest.mark.parametrize("arch", ["swin_test", "vit_test", "resnet_test"])
def test_input_conv_adapted_from_one_channel(tmp_path, arch):
    mono = seeded(arch, 32, in_chans=1)
    torch.save(mono.state_dict(), tmp_path / "mono.pth")
    model = seeded(arch, 32, seed=5)
    init_from_foundation(model, tmp_path / "mono.pth", arch, 32)
    x = x_batch(32, channels=1)
    # the 1-channel kernel is spread over 3 channels and scaled by 1/3: same output on 3 copies
    assert torch.allclose(model(x.repeat(1, 3, 1, 1)), mono(x), atol=1e-5)


def test_crop_change_resizes_position_tables(tmp_path):
    swin64 = seeded("swin_test", 64)
    save_checkpoint(
        tmp_path / "s.safetensors", swin64, {"arch": "swin_test", "crop": 64, "normalization": "z"}
    )
    state = load_foundation(tmp_path / "s.safetensors", "swin_test", 32)
    # stage 4 is 2×2 at 64 px (3×3 table) and 1×1 at 32 px (1×1 table)
    assert state["layers.3.blocks.0.attn.relative_position_bias_table"].shape == (1, 8)
    vit64 = seeded("vit_test", 64)
    torch.save(vit64.state_dict(), tmp_path / "v.pth")
    pos = load_foundation(tmp_path / "v.pth", "vit_test", 32)["pos_embed"]
    assert pos.shape == (1, 1 + 4 * 4, 32)
    assert torch.equal(pos[:, 0], vit64.pos_embed[:, 0])  # class token position kept
    vit_p16 = seeded("vit_test", 128)  # patch 16 at 128 px → patch 8 at 64 px
    torch.save(vit_p16.state_dict(), tmp_path / "p16.pth")
    state = load_foundation(tmp_path / "p16.pth", "vit_test", 64)
    assert state["patch_embed.proj.weight"].shape == (32, 3, 8, 8)
