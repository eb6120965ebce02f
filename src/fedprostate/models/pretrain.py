"""Self-supervised pre-training of a backbone on unlabeled crops: SimMIM or SimCLR.

* ``simmim`` (Swin, ViT): the crop is divided into mask patches (8 px below 192 px crops, else
  32 px, always a multiple of the token patch); 60 % of them are replaced, at token level after the
  patch embedding, by a learned mask token. The encoder's final feature map (stride 32 for Swin,
  the patch size for ViT) goes through a light linear decoder (1×1 convolution + pixel shuffle)
  back to pixels, and the loss is the L1 error on the masked pixels only.
* ``simclr`` (every family, the only one for ResNet): two augmented views (random resized crop by
  an affine grid, horizontal flip, per-channel intensity scale/shift, Gaussian noise), pooled
  features → 2-layer projection MLP → NT-Xent loss (temperature 0.2).

Every random draw (initialisation, shuffling, masks, augmentations, dropout) is made under a
fork of the global RNG seeded with ``seed`` or from explicit generators, so a run is
reproducible and leaves the caller's RNG state untouched.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from fedprostate.models.backbones import create_backbone, family

METHODS = ("simmim", "simclr")


class SimMIM(nn.Module):
    """Backbone encoder with a mask token and a linear pixel decoder."""

    def __init__(self, backbone: nn.Module, arch: str, crop: int):
        super().__init__()
        self.backbone, self.family = backbone, family(arch)
        if self.family == "swin":
            embed_dim, out_dim = backbone.embed_dim, backbone.num_features
            self.token_patch, self.stride = backbone.patch_embed.patch_size[0], 32
        elif self.family == "vit":
            embed_dim = out_dim = backbone.embed_dim
            self.token_patch = self.stride = backbone.patch_embed.patch_size[0]
        else:
            raise ValueError(f"SimMIM needs a Swin or ViT backbone, not {arch}; use simclr")
        self.mask_patch = 32 if crop >= 192 else 8
        if self.mask_patch % self.token_patch or crop % self.mask_patch:
            raise ValueError(f"mask patch {self.mask_patch} px does not tile {arch} at {crop} px")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(out_dim, self.stride**2 * 3, kernel_size=1), nn.PixelShuffle(self.stride)
        )

    def encode(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Features [B, C, h, w] with masked tokens ([B, gh, gw] bool) replaced by the mask token."""
        net = self.backbone
        tokens = net.patch_embed(x)
        if self.family == "swin":  # NHWC tokens
            m = token_mask.unsqueeze(-1).to(tokens.dtype)
            tokens = tokens * (1 - m) + self.mask_token.view(1, 1, 1, -1) * m
            return net.norm(net.layers(tokens)).permute(0, 3, 1, 2)
        m = token_mask.flatten(1).unsqueeze(-1).to(tokens.dtype)  # ViT: [B, N, C]
        tokens = tokens * (1 - m) + self.mask_token * m
        tokens = net.norm_pre(net.patch_drop(net._pos_embed(tokens)))
        tokens = net.norm(net.blocks(tokens))[:, net.num_prefix_tokens :]
        b, gh, gw = token_mask.shape
        return tokens.reshape(b, gh, gw, -1).permute(0, 3, 1, 2)

    def loss(self, x: torch.Tensor, generator: torch.Generator, ratio: float = 0.6):
        b, _, h, w = x.shape
        mh, mw = h // self.mask_patch, w // self.mask_patch
        n_masked = max(1, round(ratio * mh * mw))
        order = torch.rand(b, mh * mw, generator=generator).argsort(dim=1)
        mask = torch.zeros(b, mh * mw, dtype=torch.bool)
        mask.scatter_(1, order[:, :n_masked], True)
        mask = mask.view(b, mh, mw)
        per_token = self.mask_patch // self.token_patch
        token_mask = mask.repeat_interleave(per_token, 1).repeat_interleave(per_token, 2)
        pixel_mask = mask.repeat_interleave(self.mask_patch, 1).repeat_interleave(
            self.mask_patch, 2
        )
        recon = self.decoder(self.encode(x, token_mask))
        weight = pixel_mask.unsqueeze(1).to(x.dtype)
        return ((recon - x).abs() * weight).sum() / (weight.sum() * x.shape[1])


class SimCLR(nn.Module):
    """Backbone + projection MLP, NT-Xent over two augmented views."""

    def __init__(self, backbone: nn.Module, temperature: float = 0.2, proj_dim: int = 128):
        super().__init__()
        self.backbone, self.temperature = backbone, temperature
        width = backbone.num_features
        self.projector = nn.Sequential(
            nn.Linear(width, 256), nn.ReLU(inplace=True), nn.Linear(256, proj_dim)
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        return F.normalize(self.projector(feats), dim=1)

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = self.embed(torch.cat([augment(x, generator), augment(x, generator)]))
        n = x.shape[0]
        sim = z @ z.T / self.temperature
        sim.fill_diagonal_(float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
        return F.cross_entropy(sim, targets)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop + flip (affine grid), per-channel intensity jitter, Gaussian noise."""
    b, c = x.shape[:2]

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    scale = uniform(0.6, 1.0, b)
    shift_x, shift_y = (uniform(-1, 1, b) * (1 - scale) for _ in range(2))
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = scale * flip, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = scale, shift_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out * uniform(0.8, 1.2, b, c, 1, 1) + uniform(-0.1, 0.1, b, c, 1, 1)
    return out + 0.05 * torch.randn(out.shape, generator=generator)


def pretrain(
    arch: str,
    crops: torch.Tensor,
    method: str = "simmim",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    backbone: nn.Module | None = None,
    weight_decay: float = 0.05,
) -> tuple[nn.Module, list[float]]:
    """Pre-train ``arch`` (or continue ``backbone``) on crops [N, 3, H, W]; return it and the
    mean loss of every epoch. The returned backbone keeps its (untrained) classifier head."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if crops.ndim != 4 or crops.shape[1] != 3 or crops.shape[2] != crops.shape[3]:
        raise ValueError(f"crops must be [N, 3, H, H], got {tuple(crops.shape)}")
    if epochs < 1 or batch_size < 2 or crops.shape[0] < 2:
        raise ValueError("need epochs >= 1, batch_size >= 2 and at least 2 crops")
    crop = crops.shape[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backbone is None:
            backbone = create_backbone(arch, crop=crop)
        task = SimMIM(backbone, arch, crop) if method == "simmim" else SimCLR(backbone)
        optimizer = torch.optim.AdamW(task.parameters(), lr=lr, weight_decay=weight_decay)
        generator = torch.Generator().manual_seed(seed)
        history = _train(task, crops, epochs, batch_size, optimizer, generator, progress, method)
    return backbone, history


def _train(task, crops, epochs, batch_size, optimizer, generator, progress, method) -> list[float]:
    n = crops.shape[0]
    steps = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    steps = [s for s in steps if s[1] - s[0] >= 2]  # a 1-crop tail batch breaks SimCLR/BatchNorm
    history: list[float] = []
    task.train()
    columns = (TextColumn(f"pretrain {method}"), BarColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, TimeRemainingColumn(), disable=not progress) as bar:
        bar_task = bar.add_task("pretrain", total=epochs * len(steps), info="")
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for lo, hi in steps:
                x = crops[order[lo:hi]].float()
                loss = task.loss(x, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
                bar.update(bar_task, advance=1, info=f"epoch {epoch + 1} loss {loss.item():.4f}")
            history.append(total / len(steps))
    task.eval()
    return history
