"""Fine-tuning methods: one function from (backbone, method, options) to a model and the tensors that travel.

Methods (``FinetuneConfig.method``, the list owned by ``fedprostate.config.METHODS``):

* ``full``: every parameter trains and travels (plus BatchNorm running statistics).
* ``linear``: only the classifier head.
* ``adapter``: bottleneck adapters on the last ``adapter_blocks`` blocks of the final stage
  (see ``adapters.py``) + head.
* ``lora``: HF peft LoRA injected in place (``peft.inject_adapter_in_model``, so parameter names are
  the timm names plus ``.lora_A.default.weight``/``.lora_B.default.weight``). Swin/ViT target
  ``attn.qkv`` and ``attn.proj`` of the transformer blocks by an exact regex (never
  ``patch_embed.proj``), optionally ``mlp.fc1``/``mlp.fc2``; ResNet targets the bottleneck
  convolutions ``conv1``/``conv2``/``conv3``. The head is unfrozen directly (no ``modules_to_save``
  copy), so its names stay ``head.fc.*``/``head.*``/``fc.*``.
* ``ffa-lora`` (Sun et al., ICLR 2024): LoRA whose A matrices are frozen and drawn from a generator
  seeded with ``seed`` (identical on every client built with the same seed), so only B and
  the head train and travel; averaging B is then exactly averaging B·A.

LoRA A matrices (both methods) and adapter down-projections are drawn from a generator seeded with
``seed``; B and adapter up-projections start at zero, so every method starts at the base model.

Frozen BatchNorm layers are pinned to eval mode by a forward pre-hook: ``model.train()`` never makes
them normalise with batch statistics or update their running statistics, so a frozen backbone is
bit-identical after training. With ``local_norms=True`` (FedBN-style) every normalisation layer's
affine parameters (and BatchNorm running statistics) train but stay local: they are listed in
``Finetuned.local`` and never in ``communicated``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from fedprostate.config import FinetuneConfig
from fedprostate.models.adapters import add_adapters
from fedprostate.models.backbones import family, head_prefixes

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class Finetuned:
    """A model ready to train, and which ``state_dict`` keys travel (``communicated``, ordered),
    train but stay on the client (``local``). ``trainable`` = every key that training changes
    (trainable parameters and updating BatchNorm statistics), in state_dict order."""

    model: nn.Module
    communicated: list[str]
    local: list[str]
    trainable: list[str] = field(default_factory=list)


def lora_target_regex(arch: str, mlp: bool = False, attn: bool = True, stages: int = 0) -> str:
    """The exact (``re.fullmatch``) module-name regex peft receives for this backbone.

    ``attn``: the attention projections (qkv, proj); ``mlp``: the MLPs (fc1, fc2). MLP-only LoRA
    (``attn=False``) is what DP-SGD on a Swin needs (see ``config.WINDOWED_ARCHS``).
    ``stages`` > 0: only the last ``stages`` of the 4 stages (Swin ``layers.0-3``, ResNet
    ``layer1-4``); nothing before them trains, so autograd stops the backward pass there.
    """
    fam = family(arch)
    first = 4 - stages if stages else 0
    if stages and fam not in ("resnet", "swin"):
        raise ValueError(
            f"finetune.lora_stages: {arch} has no stages (Swin and ResNet do); use 0 (every block)"
        )
    if fam == "resnet":
        return rf"layer[{first + 1}-4]\.\d+\.conv[123]"
    if not (attn or mlp):
        raise ValueError("LoRA needs attention or MLP targets")
    blocks = rf"layers\.[{first}-3]\.blocks\.\d+" if fam == "swin" else r"blocks\.\d+"
    parts = ([r"attn\.(qkv|proj)"] if attn else []) + ([r"mlp\.(fc1|fc2)"] if mlp else [])
    return rf"{blocks}\.({'|'.join(parts)})"


def _keep_eval(module: nn.Module, args) -> None:
    # forward pre-hook of a frozen BatchNorm: normalise with (and never update) running stats
    module.training = False


def _lora_layers(model: nn.Module) -> list[tuple[str, LoraLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def _inject_lora(model: nn.Module, arch: str, spec: FinetuneConfig, seed: int) -> nn.Module:
    config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=lora_target_regex(arch, spec.lora_mlp, spec.lora_attn, spec.lora_stages),
        bias="none",
    )
    model = inject_adapter_in_model(config, model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in _lora_layers(model):
            weight_a = layer.lora_A["default"].weight
            nn.init.kaiming_uniform_(weight_a, a=math.sqrt(5), generator=generator)
            layer.lora_B["default"].weight.zero_()
            weight_a.requires_grad_(spec.method != "ffa-lora")
            layer.lora_B["default"].weight.requires_grad_(True)
    return model


def build_finetune(
    backbone: nn.Module, arch: str, spec: FinetuneConfig | None = None, seed: int = 0
) -> Finetuned:
    """Prepare ``backbone`` (modified in place) for ``spec.method``; see the module docstring.

    ``seed`` draws LoRA A matrices (FFA-LoRA's shared A) and adapter down-projections.
    """
    spec = spec or FinetuneConfig()
    model = backbone
    full = spec.method == "full"
    for p in model.parameters():
        p.requires_grad_(full)
    if spec.method in ("lora", "ffa-lora"):
        model = _inject_lora(model, arch, spec, seed)
    elif spec.method == "adapter":
        for adapter in add_adapters(model, arch, spec.adapter_dim, spec.adapter_blocks, seed):
            adapter.requires_grad_(True)
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)

    local: set[str] = set()
    updating_stats: set[str] = set()
    for mod_name, module in model.named_modules():
        if not isinstance(module, _NORM_TYPES):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        if spec.local_norms:
            module.requires_grad_(True)
            local.update(prefix + n for n, _ in module.named_parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if full or spec.local_norms:
                stats = {prefix + n for n in _BN_STATS if getattr(module, n, None) is not None}
                updating_stats.update(stats)
                # the step counter is per-client bookkeeping (unused with a fixed momentum)
                local.add(prefix + "num_batches_tracked")
                if spec.local_norms:
                    local.update(stats)
            else:
                module.register_forward_pre_hook(_keep_eval)

    grad_names = {n for n, p in model.named_parameters() if p.requires_grad}
    trainable_set = grad_names | updating_stats
    keys = list(model.state_dict().keys())
    trainable = [k for k in keys if k in trainable_set]
    local_list = [k for k in keys if k in local and k in trainable_set]
    communicated = [k for k in trainable if k not in local]
    missing_head = [p for p in head_prefixes(model) if not any(k.startswith(p) for k in trainable)]
    if missing_head:
        raise RuntimeError(f"classifier head {missing_head} is not trainable")
    return Finetuned(model=model, communicated=communicated, local=local_list, trainable=trainable)


def get_communicated(ft: Finetuned) -> dict[str, torch.Tensor]:
    """Detached copies of the communicated tensors, in ``ft.communicated`` order."""
    state = ft.model.state_dict()
    return {k: state[k].detach().clone() for k in ft.communicated}


def set_communicated(ft: Finetuned, tensors: dict[str, torch.Tensor]) -> None:
    """Load exactly the communicated set; missing, extra or mis-shaped keys raise ValueError."""
    expected = set(ft.communicated)
    missing = [k for k in ft.communicated if k not in tensors]
    extra = sorted(k for k in tensors if k not in expected)
    if missing:
        raise ValueError(f"communicated tensors missing {len(missing)} key(s), e.g. {missing[:3]}")
    if extra:
        raise ValueError(f"unexpected communicated key(s): {extra[:3]}")
    state = ft.model.state_dict()
    for k in ft.communicated:
        if tuple(tensors[k].shape) != tuple(state[k].shape):
            raise ValueError(
                f"shape mismatch for {k}: got {tuple(tensors[k].shape)}, "
                f"model has {tuple(state[k].shape)}"
            )
    with torch.no_grad():
        for k in ft.communicated:
            state[k].copy_(torch.as_tensor(tensors[k]))


def count_trainable(ft: Finetuned) -> int:
    """Number of trainable parameter elements (what an optimizer updates)."""
    return sum(p.numel() for p in ft.model.parameters() if p.requires_grad)


def payload_bytes(ft: Finetuned, bytes_per_value: int = 4) -> int:
    """Size of one upload of the communicated set at ``bytes_per_value`` (fp32 = 4)."""
    state = ft.model.state_dict()
    return sum(state[k].numel() for k in ft.communicated) * bytes_per_value


def merge_for_inference(ft: Finetuned) -> nn.Module:
    """An eval-mode copy with every LoRA layer merged into its base layer (a plain timm module).

    Adapters are non-linear and stay as they are.
    """
    model = copy.deepcopy(ft.model)
    for name, layer in _lora_layers(model):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def inference_structure(spec: FinetuneConfig) -> dict:
    """What a bundle must rebuild besides the timm backbone to load merged weights.

    LoRA merges into the base weights (nothing to rebuild); bottleneck adapters are non-linear and
    stay as modules (``models.bundle`` re-attaches them from this description).
    """
    if spec.method == "adapter":
        return {"adapter": {"dim": spec.adapter_dim, "blocks": spec.adapter_blocks}}
    return {}
