"""Bottleneck adapters (down, GELU, up, residual) on the final stage of a backbone.

An adapter is attached as a child module ``adapter`` of a block and applied to the block's output
by a forward hook, so the base model's parameter names never change (foundation weights and
communicated keys stay stable): ``layers.3.blocks.1.adapter.down.weight`` etc.
The up-projection is zero-initialised, so a freshly adapted model computes exactly the base model.
Transformer blocks (Swin, ViT) get linear adapters over the channel-last features; ResNet
bottlenecks get 1×1-convolution adapters over ``[B, C, H, W]`` maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from fedprostate.models.backbones import family, final_stage_blocks


class LinearAdapter(nn.Module):
    """x + up(GELU(down(x))) over the last (channel) dimension."""

    def __init__(self, dim: int, bottleneck: int, generator: torch.Generator | None = None):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        _init_adapter(self.down.weight, self.down.bias, self.up.weight, self.up.bias, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class ConvAdapter(nn.Module):
    """x + up(GELU(down(x))) with 1×1 convolutions over ``[B, C, H, W]``."""

    def __init__(self, dim: int, bottleneck: int, generator: torch.Generator | None = None):
        super().__init__()
        self.down = nn.Conv2d(dim, bottleneck, kernel_size=1)
        self.act = nn.GELU()
        self.up = nn.Conv2d(bottleneck, dim, kernel_size=1)
        _init_adapter(self.down.weight, self.down.bias, self.up.weight, self.up.bias, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def _init_adapter(down_w, down_b, up_w, up_b, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        nn.init.kaiming_uniform_(down_w, a=math.sqrt(5), generator=generator)
        down_b.zero_()
        up_w.zero_()  # zero up-projection: the adapted model starts equal to the base model
        up_b.zero_()


def _apply_adapter(module: nn.Module, inputs, output):
    # forward hook: the returned value replaces the block's output
    return module.adapter(output)


def _block_dim(block: nn.Module, fam: str) -> int:
    if fam == "resnet":
        return block.conv3.out_channels
    return block.norm1.normalized_shape[0]


def add_adapters(model: nn.Module, arch: str, bottleneck: int, num_blocks: int, seed: int) -> list:
    """Attach adapters to the last ``num_blocks`` blocks of the final stage; return the adapters.

    Down-projections are drawn from a generator seeded with ``seed`` (not the global RNG).
    """
    fam = family(arch)
    blocks = final_stage_blocks(model, arch)
    if not 1 <= num_blocks <= len(blocks):
        raise ValueError(
            f"adapter_blocks={num_blocks} but the final stage of {arch} has {len(blocks)} blocks"
        )
    generator = torch.Generator().manual_seed(seed)
    adapters = []
    for block in blocks[-num_blocks:]:
        if hasattr(block, "adapter"):
            raise ValueError(f"{arch}: a block already carries an adapter")
        dim = _block_dim(block, fam)
        cls = ConvAdapter if fam == "resnet" else LinearAdapter
        block.adapter = cls(dim, bottleneck, generator)
        block.register_forward_hook(_apply_adapter)
        adapters.append(block.adapter)
    return adapters
