"""The key layouts people actually hold for medical backbones, mapped onto timm's names.

Detected from the key names (after ``module.``/``backbone.``/``encoder.`` prefixes are stripped
by ``foundation.remap_keys``), never from the file name:

========================  =====================================================  ===========
layout                    keys (examples)                                        family
========================  =====================================================  ===========
``timm-swin``             ``layers.0.blocks.0.attn.qkv.weight``                  swin
``timm-vit``              ``blocks.0.attn.qkv.weight``, ``pos_embed``            vit
``resnet``                ``conv1.weight``, ``layer1.0.conv1.weight``, ``fc.*``  resnet
                          (torchvision's ResNet-50 and timm's share these names)
``radimagenet-resnet``    ``backbone.0.weight``, ``backbone.4.0.conv1.weight``   resnet
                          (RadImageNet's PyTorch ResNet-50: ``nn.Sequential`` of
                          torchvision's children, indices 0 conv1, 1 bn1, 4–7
                          layer1–4)
``open_clip-timm-vit``    ``visual.trunk.blocks.0.attn.qkv.weight``,             vit
                          ``visual.head.proj.weight``, ``text.*``
                          (BiomedCLIP: a timm ViT-B/16 inside open_clip)
``openai-clip-vit``       ``visual.class_embedding``, ``visual.conv1.weight``,    vit
                          ``visual.transformer.resblocks.0.attn.in_proj_weight``
                          (open_clip's own ViT-B/16, OpenAI CLIP)
========================  =====================================================  ===========

The two CLIP layouts are converted by timm's own ``vision_transformer.checkpoint_filter_fn``
(the text tower is left out). The OpenAI layout has a LayerNorm before the blocks (``ln_pre``):
it loads into ``vit_base_clip`` (timm's ``vit_base_patch16_clip_224``), not into ``vit_base``.
"""

from __future__ import annotations

import re

import torch

_SEQUENTIAL_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                      "7": "layer4"}  # fmt: skip
LAYOUT_FAMILY = {
    "timm-swin": "swin",
    "timm-vit": "vit",
    "resnet": "resnet",
    "radimagenet-resnet": "resnet",
    "open_clip-timm-vit": "vit",
    "openai-clip-vit": "vit",
}


def detect_layout(keys) -> str:
    """The layout of a state dict's keys (see the module table), or ``"unknown"``."""
    keys = set(keys)
    if "visual.class_embedding" in keys or "visual.transformer.resblocks.0.ln_1.weight" in keys:
        return "openai-clip-vit"
    if any(k.startswith("visual.trunk.") for k in keys):
        return "open_clip-timm-vit"
    if any(k.startswith("layers.0.blocks.0.") for k in keys):
        return "timm-swin"
    if any(k.startswith("blocks.0.attn.") for k in keys) and "pos_embed" in keys:
        return "timm-vit"
    if "conv1.weight" in keys and any(k.startswith("layer1.0.") for k in keys):
        return "resnet"
    if "0.weight" in keys and any(k.startswith("4.0.conv1.") for k in keys):
        return "radimagenet-resnet"
    return "unknown"


def to_timm(state: dict[str, torch.Tensor], layout: str, model) -> dict[str, torch.Tensor]:
    """The state dict in the key names of the timm ``model`` it is meant for."""
    if layout in ("openai-clip-vit", "open_clip-timm-vit"):
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = {k: v for k, v in state.items() if k.startswith("visual.")}
        return checkpoint_filter_fn(state, model)
    if layout == "radimagenet-resnet":
        out = {}
        for key, value in state.items():
            index, _, rest = key.partition(".")
            if index not in _SEQUENTIAL_RESNET:
                raise ValueError(f"RadImageNet-style key {key!r}: no ResNet child at index {index}")
            out[f"{_SEQUENTIAL_RESNET[index]}.{rest}"] = value
        return out
    return state


def wrong_family_hint(layout: str, arch_family: str, arch: str) -> str | None:
    """A sentence naming the mismatch when a checkpoint's layout is of another family."""
    family = LAYOUT_FAMILY.get(layout)
    if family is None or family == arch_family:
        return None
    return (
        f"the checkpoint is a {layout} state dict ({family} family), {arch} is a "
        f"{arch_family}: choose a {family} architecture"
    )


def clip_hint(layout: str, unexpected: list[str]) -> str | None:
    if layout == "openai-clip-vit" and any(re.match(r"norm_pre\.", k) for k in unexpected):
        return "an OpenAI/open_clip ViT has a LayerNorm before its blocks: use arch vit_base_clip"
    return None
