"""Public checkpoint layouts load with the real key names: torchvision and RadImageNet ResNet-50,
open_clip/BiomedCLIP (timm trunk) and OpenAI-CLIP ViT-B/16; mismatches are named.

Every state dict here is generated (no download): torchvision's own ResNet-50 class, RadImageNet's
``nn.Sequential`` of its children, a timm ViT under open_clip's ``visual.trunk.`` prefix, and the
OpenAI-CLIP names written out as open_clip's ``VisionTransformer`` defines them (tiny widths).
"""

import pytest
import torch
import torch.nn as nn

from fedprostate.models.backbones import create_backbone
from fedprostate.models.foundation import FoundationError, init_from_foundation, load_foundation
from fedprostate.models.layouts import detect_layout
from fedprostate.models.ssl import pooled


def seeded(fn, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def images(crop, n=2):
    return torch.randn(n, 3, crop, crop, generator=torch.Generator().manual_seed(1))


def randomized_bn(model):
    """BatchNorm statistics away from (0, 1), so a mis-mapped buffer changes the output."""
    gen = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def torchvision_resnet50():
    torchvision = pytest.importorskip("torchvision")
    return randomized_bn(seeded(lambda: torchvision.models.resnet50(weights=None)))


def _our_features(path, arch, crop):
    model = seeded(lambda: create_backbone(arch, crop=crop), seed=7)
    init_from_foundation(model, path, arch, crop)
    return pooled(model.eval(), images(crop))


def test_torchvision_resnet50_state_dict_loads_and_computes_the_same_features(
    tmp_path, torchvision_resnet50
):
    state = torchvision_resnet50.state_dict()
    assert detect_layout(state) == "resnet"
    path = tmp_path / "resnet50-torchvision.pth"
    torch.save(state, path)
    loaded = load_foundation(path, "resnet50", 64)
    assert "fc.weight" not in loaded  # the 1000-class ImageNet head is dropped
    trunk = nn.Sequential(*list(torchvision_resnet50.children())[:-1], nn.Flatten())
    with torch.no_grad():
        expected = trunk(images(64))
        got = _our_features(path, "resnet50", 64)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_radimagenet_sequential_state_dict_loads_into_resnet50(tmp_path, torchvision_resnet50):
    class RadImageNetBackbone(nn.Module):  # as in RadImageNet's pytorch_example notebook
        def __init__(self, base):
            super().__init__()
            self.backbone = nn.Sequential(*list(base.children())[:9])

    state = RadImageNetBackbone(torchvision_resnet50).state_dict()
    assert "backbone.4.0.conv1.weight" in state and "backbone.0.weight" in state
    path = tmp_path / "RadImageNet-ResNet50.pt"
    torch.save(state, path)
    with torch.no_grad():
        expected = torch.flatten(RadImageNetBackbone(torchvision_resnet50).backbone(images(64)), 1)
        got = _our_features(path, "resnet50", 64)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_biomedclip_open_clip_timm_trunk_loads_into_vit(tmp_path):
    trunk = seeded(lambda: create_backbone("vit_test", crop=32, num_classes=0)).eval()
    state = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    state["visual.head.proj.weight"] = torch.randn(
        16, 32
    )  # open_clip's projection to the joint space
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(50, 8)
    state["text.proj.0.weight"] = torch.randn(16, 8)
    state["logit_scale"] = torch.tensor(4.6)
    assert detect_layout(state) == "open_clip-timm-vit"
    path = tmp_path / "biomedclip.bin"
    torch.save({"state_dict": state}, path)
    with torch.no_grad():
        got = _our_features(path, "vit_test", 32)
        expected = pooled(trunk, images(32))
    torch.testing.assert_close(got, expected)


def openai_clip_visual(width=32, layers=3, patch=16, grid=4, mlp=64, embed=16) -> dict:
    """open_clip ``VisionTransformer`` (OpenAI CLIP) key names and shapes, plus a text tower."""
    gen = torch.Generator().manual_seed(3)

    def r(*shape):
        return 0.02 * torch.randn(*shape, generator=gen)

    s = {
        "visual.class_embedding": r(width),
        "visual.positional_embedding": r(1 + grid * grid, width),
        "visual.proj": r(width, embed),
        "visual.conv1.weight": r(width, 3, patch, patch),
        "visual.ln_pre.weight": 1 + r(width), "visual.ln_pre.bias": r(width),
        "visual.ln_post.weight": 1 + r(width), "visual.ln_post.bias": r(width),
        "token_embedding.weight": r(49, width), "positional_embedding": r(77, width),
        "ln_final.weight": r(width), "text_projection": r(width, embed), "logit_scale": r(()),
        "transformer.resblocks.0.ln_1.weight": r(width),
    }  # fmt: skip
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}."
        s |= {
            b + "ln_1.weight": 1 + r(width), b + "ln_1.bias": r(width),
            b + "attn.in_proj_weight": r(3 * width, width), b + "attn.in_proj_bias": r(3 * width),
            b + "attn.out_proj.weight": r(width, width), b + "attn.out_proj.bias": r(width),
            b + "ln_2.weight": 1 + r(width), b + "ln_2.bias": r(width),
            b + "mlp.c_fc.weight": r(mlp, width), b + "mlp.c_fc.bias": r(mlp),
            b + "mlp.c_proj.weight": r(width, mlp), b + "mlp.c_proj.bias": r(width),
        }  # fmt: skip
    return s


def test_openai_clip_layout_loads_into_the_clip_tower_and_is_named_elsewhere(tmp_path):
    state = openai_clip_visual()
    assert detect_layout(state) == "openai-clip-vit"
    path = tmp_path / "open_clip_ViT-B-16.pt"
    torch.save(state, path)
    # 64 px source grid 4x4 at patch 16 -> our 32 px crop, patch 8, grid 4x4 (kernel resampled)
    loaded = load_foundation(path, "vit_clip_test", 32)
    assert torch.equal(
        loaded["blocks.2.attn.qkv.weight"],
        state["visual.transformer.resblocks.2.attn.in_proj_weight"],
    )
    assert torch.equal(loaded["norm_pre.weight"], state["visual.ln_pre.weight"])
    assert torch.equal(loaded["cls_token"].flatten(), state["visual.class_embedding"])
    assert loaded["patch_embed.proj.weight"].shape == (32, 3, 8, 8)
    assert not any(k.startswith(("token_embedding", "ln_final", "text")) for k in loaded)
    with pytest.raises(FoundationError, match=r"openai-clip-vit.*vit_base_clip.*norm_pre\.weight"):
        load_foundation(path, "vit_test", 32)


def test_a_checkpoint_of_another_family_is_refused_by_name(tmp_path, torchvision_resnet50):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision_resnet50.state_dict(), path)
    with pytest.raises(
        FoundationError, match=r"resnet state dict \(resnet family\).*swin_test is a swin"
    ):
        load_foundation(path, "swin_test", 32)
    swin = seeded(lambda: create_backbone("swin_test", crop=32))
    torch.save(swin.state_dict(), tmp_path / "swin.pth")
    with pytest.raises(FoundationError, match=r"timm-swin.*vit"):
        load_foundation(tmp_path / "swin.pth", "vit_test", 32)


def test_truncated_safetensors_is_one_clear_error(tmp_path):
    from fedprostate.models.foundation import save_checkpoint

    path = tmp_path / "f.safetensors"
    save_checkpoint(path, create_backbone("swin_test", crop=32), {"arch": "swin_test", "crop": 32,
                    "normalization": "z"})  # fmt: skip
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(FoundationError, match="unreadable checkpoint"):
        load_foundation(path, "swin_test", 32)
