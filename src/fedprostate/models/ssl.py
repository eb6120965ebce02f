"""Self-supervised objectives over a timm backbone: SimMIM, SimCLR and DINO.

Each objective is an ``nn.Module`` with the same small interface, so one trainer (``pretrain.py``)
and one federated round (``fl/pretrain_site.py``) drive all of them:

* ``loss(x, generator)``: the objective on a batch of crops [B, 3, H, W];
* ``after_step(progress)``: what happens after an optimizer step (DINO's momentum teacher);
* ``encoder()``: the backbone to keep as the foundation.

Methods:

* ``simmim`` (Swin, ViT): the crop is divided into mask patches (8 px below 192 px crops, else
  32 px, always a multiple of the token patch); 60 % of them are replaced, at token level after the
  patch embedding, by a learned mask token. The encoder's final feature map (stride 32 for Swin,
  the patch size for ViT) goes through a light linear decoder (1×1 convolution + pixel shuffle)
  back to pixels, and the loss is the L1 error on the masked pixels only.
* ``simclr`` (every family): two augmented views, pooled features → 2-layer projection MLP →
  NT-Xent loss (temperature 0.2).
* ``dino`` (every family; Caron et al. 2021, "Emerging properties in self-supervised vision
  transformers"): a student (backbone + projection head) matches the centred, sharpened output
  of a momentum teacher (an exponential moving average of the student) across views: two global
  views (side 0.7–1 of the crop) seen by both, ``n_local`` local views (side 0.4–0.65) seen by
  the student only.
  The teacher is what is kept: its pooled features are the ones a frozen-backbone method uses.
  Written here (about 60 lines) rather than taken from lightly: see docs/readme/foundation.md.

Views are made by :func:`augment` at the crop size: a random resized crop and a left-right flip
(one affine grid), intensity jitter on T2 and DWI only, Gaussian noise. No colour jitter, grey
scale or solarisation, and the ADC channel keeps its value: the channels are T2, ADC and DWI,
and ADC is a physical measurement (a view that rescales it teaches the encoder to ignore the
strongest sign of csPCa; a reason, not a measurement: see docs/readme/foundation.md).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)

from fedprostate.config import SSL_METHODS
from fedprostate.models.backbones import family


def pooled(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's pooled features (what a linear probe or a frozen-backbone head sees)."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


ADC_CHANNEL = 1  # channels are (T2, ADC, DWI): fedprostate.models.foundation.CHANNELS


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.6, 1.0),
    jitter: float = 0.2,
    adc_jitter: float = 0.0,
    shift: float = 1.0,
) -> torch.Tensor:
    """Random resized crop (side as a fraction of the crop in ``scale``) + left-right flip (one
    affine grid), per-channel intensity gain ``1 ± jitter`` and offset ``± jitter / 2`` on T2
    and DWI, ``adc_jitter`` on ADC (default 0: the ADC value is a physical measurement and the
    strongest single sign of csPCa, so a view must not change it), Gaussian noise (SD 0.05).
    Random numbers are drawn on the CPU from ``generator``, so a run is the same on every
    device."""
    b, c = x.shape[:2]

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    side = uniform(scale[0], scale[1], b)
    shift_x, shift_y = (uniform(-1, 1, b) * (1 - side) * shift for _ in range(2))
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = side * flip, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = side, shift_y
    amount = torch.full((1, c, 1, 1), jitter)
    amount[:, ADC_CHANNEL::3] = adc_jitter
    gain = 1 + amount * uniform(-1, 1, b, c, 1, 1)
    offset = amount / 2 * uniform(-1, 1, b, c, 1, 1)
    noise = 0.05 * torch.randn(x.shape, generator=generator)
    dev = x.device
    grid = F.affine_grid(theta.to(dev, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out * gain.to(dev, x.dtype) + offset.to(dev, x.dtype) + noise.to(dev, x.dtype)


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
            raise ValueError(f"SimMIM needs a Swin or ViT backbone, not {arch}; use simclr or dino")
        self.mask_patch = 32 if crop >= 192 else 8
        if self.mask_patch % self.token_patch or crop % self.mask_patch:
            raise ValueError(f"mask patch {self.mask_patch} px does not tile {arch} at {crop} px")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(out_dim, self.stride**2 * 3, kernel_size=1), nn.PixelShuffle(self.stride)
        )

    def encoder(self) -> nn.Module:
        return self.backbone

    def after_step(self, progress: float) -> None:
        """Nothing to do after a step."""

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
        mask = mask.view(b, mh, mw).to(x.device)
        per_token = self.mask_patch // self.token_patch
        token_mask = mask.repeat_interleave(per_token, 1).repeat_interleave(per_token, 2)
        pixel_mask = mask.repeat_interleave(self.mask_patch, 1).repeat_interleave(
            self.mask_patch, 2
        )
        recon = self.decoder(self.encode(x, token_mask)).float()
        weight = pixel_mask.unsqueeze(1).to(recon.dtype)
        return ((recon - x.float()).abs() * weight).sum() / (weight.sum() * x.shape[1])


class SimCLR(nn.Module):
    """Backbone + projection MLP, NT-Xent over two augmented views."""

    def __init__(self, backbone: nn.Module, temperature: float = 0.2, proj_dim: int = 128):
        super().__init__()
        self.backbone, self.temperature = backbone, temperature
        width = backbone.num_features
        self.projector = nn.Sequential(
            nn.Linear(width, 256), nn.ReLU(inplace=True), nn.Linear(256, proj_dim)
        )

    def encoder(self) -> nn.Module:
        return self.backbone

    def after_step(self, progress: float) -> None:
        """Nothing to do after a step."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(pooled(self.backbone, x)).float(), dim=1)

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = self.embed(torch.cat([augment(x, generator), augment(x, generator)]))
        n = x.shape[0]
        sim = z @ z.T / self.temperature
        sim.fill_diagonal_(float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(sim, targets)


class DINOHead(nn.Module):
    """MLP → L2-normalised bottleneck → weight-normalised linear layer (norm fixed at 1)."""

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden: int = 512, bottleneck: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.last = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.trunc_normal_(self.last, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x).float(), dim=-1)
        return z @ F.normalize(self.last.float(), dim=1).T


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
) -> torch.Tensor:
    """Cross-entropy between the centred, sharpened teacher distribution of each global view and
    the student's distribution of every *other* view, averaged over the pairs."""
    targets = [F.softmax((t - center) / teacher_temp, dim=-1).detach() for t in teacher]
    logs = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    total, pairs = student[0].new_zeros(()), 0
    for i, target in enumerate(targets):
        for j, log_p in enumerate(logs):
            if i != j:
                total = total - (target * log_p).sum(dim=-1).mean()
                pairs += 1
    return total / pairs


class DINO(nn.Module):
    """Self-distillation with no labels: student and momentum teacher, centring and sharpening."""

    def __init__(
        self,
        backbone: nn.Module,
        out_dim: int = 1024,
        n_local: int = 2,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        momentum: tuple[float, float] = (0.996, 1.0),
    ):
        super().__init__()
        self.backbone = backbone
        self.head = DINOHead(backbone.num_features, out_dim)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.head)
        for p in [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.n_local, self.momentum = n_local, momentum
        self.teacher_temp, self.student_temp = teacher_temp, student_temp
        self.center_momentum = center_momentum

    def encoder(self) -> nn.Module:
        return self.teacher_backbone

    def train(self, mode: bool = True) -> DINO:
        super().train(mode)
        self.teacher_backbone.eval()  # the teacher never updates BatchNorm statistics itself
        self.teacher_head.eval()
        return self

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        globals_ = [augment(x, generator, (0.7, 1.0)) for _ in range(2)]
        locals_ = [augment(x, generator, (0.4, 0.65)) for _ in range(self.n_local)]
        n = x.shape[0]
        student = self.head(pooled(self.backbone, torch.cat(globals_ + locals_))).split(n)
        with torch.no_grad():
            teacher = self.teacher_head(pooled(self.teacher_backbone, torch.cat(globals_)))
            teacher = list(teacher.float().split(n))
        loss = dino_loss(list(student), teacher, self.center, self.teacher_temp, self.student_temp)
        with torch.no_grad():
            batch_center = torch.cat(teacher).mean(dim=0, keepdim=True)
            self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
        return loss

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """EMA teacher update; the momentum rises from 0.996 to 1 on a cosine over training."""
        lo, hi = self.momentum
        m = hi - (hi - lo) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2
        pairs = ((self.backbone, self.teacher_backbone), (self.head, self.teacher_head))
        for student, teacher in pairs:
            for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            for bs, bt in zip(student.buffers(), teacher.buffers(), strict=True):
                bt.copy_(bs)


_TASKS = {
    "simmim": lambda backbone, arch, crop: SimMIM(backbone, arch, crop),
    "simclr": lambda backbone, arch, crop: SimCLR(backbone),
    "dino": lambda backbone, arch, crop: DINO(backbone),
}
if set(_TASKS) != set(SSL_METHODS):  # config.SSL_METHODS is what a configuration may name
    raise ImportError(f"config.SSL_METHODS and models.ssl differ: {set(_TASKS) ^ set(SSL_METHODS)}")


def make_task(method: str, backbone: nn.Module, arch: str, crop: int) -> nn.Module:
    """The self-supervised objective ``method`` around ``backbone``."""
    if method not in _TASKS:
        raise ValueError(f"pre-training method {method!r} is not one of {', '.join(SSL_METHODS)}")
    return _TASKS[method](backbone, arch, crop)
