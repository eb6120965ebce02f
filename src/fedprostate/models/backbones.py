"""Backbone factory over timm, sized so every backbone sees a comparable token grid at small crops.

All backbones are built with ``timm.create_model(name, pretrained=False, num_classes=2, in_chans=3)``;
the variants are data (``BACKBONES``), the crop-dependent arguments are derived here:

* **Swin** (patch 4): a crop of ``c`` px gives grids ``c/4, c/8, c/16, c/32`` across the four
  stages. The window is the first of ``(7, 4, 8, 6, 3, 2)`` that divides every stage grid at least
  as large as the window (timm clamps the window to the grid when the grid is smaller, which is
  then global attention without shift). At 224 px this is the standard window 7 (56/28/14/7); at
  64 px it is window 4: 16×16 tokens in 4×4 windows at stage 1, 8×8 (shifted windows), 4×4
  (one window, global) and 2×2 (global) at stage 4.
* **ViT** uses patch 8 below 128 px and patch 16 from 128 px up: 64 px → 8×8 = 64 tokens
  (patch 16 would leave only 4×4 = 16), 224 px → the standard 14×14. So at 64 px ViT attends over
  64 tokens of 8×8 px, Swin starts from 16×16 tokens of 4×4 px and ends on a 2×2 grid, and
  ResNet-50 (stride 32, no size argument) ends on a 2×2 feature map like Swin's stage 4.

ResNets are built with ``zero_init_last=False``: timm's default zeroes the last BatchNorm scale of
every bottleneck, which for a frozen randomly initialised backbone makes every residual branch
(and any LoRA or adapter inside it) output zero and receive no gradient.

The crop must be a multiple of 32 (Swin and ResNet downsample by 32). Tiny test variants
(``swin_test``, ``vit_test``, ``resnet_test``) keep the real module structure (same parameter
names, same fine-tuning targets) with few channels and are fast at 32×32.
"""

from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn

from fedprostate.config import ARCHS

# name → {"model": timm model name, "family": swin|vit|resnet, **timm keyword overrides}
BACKBONES: dict[str, dict[str, Any]] = {
    "swin_tiny": {"model": "swin_tiny_patch4_window7_224", "family": "swin"},
    "resnet50": {"model": "resnet50", "family": "resnet", "zero_init_last": False},
    "vit_small": {"model": "vit_small_patch16_224", "family": "vit"},
    "vit_base": {"model": "vit_base_patch16_224", "family": "vit"},
    # the CLIP image tower (LayerNorm before the blocks): open_clip's own / OpenAI ViT-B/16 load here
    "vit_base_clip": {"model": "vit_base_patch16_clip_224", "family": "vit"},
    "swin_test": {
        "model": "swin_tiny_patch4_window7_224",
        "family": "swin",
        "embed_dim": 24,
        "depths": (2, 2, 2, 2),
        "num_heads": (1, 2, 4, 8),
    },
    "vit_test": {
        "model": "vit_small_patch16_224",
        "family": "vit",
        "embed_dim": 32,
        "depth": 3,
        "num_heads": 2,
        "mlp_ratio": 2.0,
    },
    "vit_clip_test": {
        "model": "vit_base_patch16_clip_224",
        "family": "vit",
        "embed_dim": 32,
        "depth": 3,
        "num_heads": 2,
        "mlp_ratio": 2.0,
    },
    "resnet_test": {
        "model": "resnet50",
        "family": "resnet",
        "layers": (1, 1, 1, 2),
        "channels": (8, 16, 32, 64),
        "stem_width": 8,
        "zero_init_last": False,
    },
    # compact students for knowledge distillation (trained with finetune.method = "full")
    "resnet18": {"model": "resnet18", "family": "resnet", "zero_init_last": False},
    "mobilenetv3_small_100": {"model": "mobilenetv3_small_100", "family": "cnn"},
    "mobilenetv3_large_100": {"model": "mobilenetv3_large_100", "family": "cnn"},
    "efficientnet_b0": {"model": "efficientnet_b0", "family": "cnn"},
    "swin_mini": {
        "model": "swin_tiny_patch4_window7_224",
        "family": "swin",
        "embed_dim": 48,
        "depths": (1, 1, 2, 1),
        "num_heads": (2, 4, 8, 16),
    },
    "student_test": {
        "model": "resnet18",
        "family": "resnet",
        "layers": (1, 1, 1, 1),
        "channels": (8, 16, 32, 64),
        "stem_width": 8,
        "zero_init_last": False,
    },
}
if set(BACKBONES) != set(ARCHS):  # config.ARCHS is what a configuration may name
    raise ImportError(f"config.ARCHS and BACKBONES differ: {sorted(set(BACKBONES) ^ set(ARCHS))}")

SWIN_PATCH = 4
_SWIN_WINDOW_CANDIDATES = (7, 4, 8, 6, 3, 2)


def family(arch: str) -> str:
    """The backbone family (``swin``, ``vit``, ``resnet`` or ``cnn``) of a name in ``BACKBONES``."""
    return _entry(arch)["family"]


def _entry(arch: str) -> dict[str, Any]:
    if arch not in BACKBONES:
        raise ValueError(f"unknown backbone {arch!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[arch]


def swin_window(crop: int) -> int:
    """Window size for a Swin with patch 4 at this crop (see the module docstring)."""
    grids = [crop // (SWIN_PATCH * 2**stage) for stage in range(4)]
    for window in _SWIN_WINDOW_CANDIDATES:
        if all(g % window == 0 for g in grids if g >= window):
            return window
    raise ValueError(f"no Swin window tiles the stage grids {grids} of a {crop} px crop")


def vit_patch(crop: int) -> int:
    """Patch size for a ViT at this crop: 8 below 128 px, else 16."""
    return 8 if crop < 128 else 16


def crop_kwargs(arch: str, crop: int) -> dict[str, Any]:
    """The timm keyword arguments that depend on the crop size."""
    if crop <= 0 or crop % 32:
        raise ValueError(f"crop must be a positive multiple of 32, got {crop}")
    fam = family(arch)
    if fam == "swin":
        return {"img_size": crop, "window_size": swin_window(crop)}
    if fam == "vit":
        return {"img_size": crop, "patch_size": vit_patch(crop)}
    return {}


def create_backbone(
    name: str = "swin_tiny", crop: int = 64, num_classes: int = 2, in_chans: int = 3, **overrides
) -> nn.Module:
    """Build a randomly initialised timm backbone (never downloads weights)."""
    entry = _entry(name)
    kwargs = {k: v for k, v in entry.items() if k not in ("model", "family")}
    kwargs.update(crop_kwargs(name, crop))
    kwargs.update(overrides)
    return timm.create_model(
        entry["model"], pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


def input_conv_key(arch: str) -> str:
    """State-dict key of the first (input) convolution's weight."""
    fam = family(arch)
    if fam == "cnn":  # timm EfficientNet / MobileNet layout
        return "conv_stem.weight"
    return "conv1.weight" if fam == "resnet" else "patch_embed.proj.weight"


def head_module(model: nn.Module) -> nn.Module:
    """The classifier module (``head.fc`` for Swin, ``head`` for ViT, ``fc`` for ResNet)."""
    return model.get_classifier()


def head_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes (with trailing dot) of the classifier's parameters."""
    head = head_module(model)
    return [f"{name}." for name, module in model.named_modules() if module is head]


def final_stage_blocks(model: nn.Module, arch: str) -> list[nn.Module]:
    """The blocks of the final stage: Swin ``layers[-1].blocks``, ViT ``blocks``, ResNet ``layer4``."""
    fam = family(arch)
    if fam == "swin":
        return list(model.layers[-1].blocks)
    if fam == "vit":
        return list(model.blocks)
    if fam == "cnn":
        return list(model.blocks[-1])
    return list(model.layer4)
