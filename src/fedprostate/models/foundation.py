"""Foundation weights: load, adapt to our backbone/crop, hash, and save with metadata.

Sources: the project's own pre-training checkpoints (``.safetensors`` + ``.json``), any local
timm-format ``.safetensors``/``.pth``/``.pt``, or — only where a network exists, never in tests — a
hub model given as ``timm:<name>`` or ``hf-hub:<repo>``.

Adaptation, against a reference ``create_backbone(arch, crop)``:
* keys: ``module.``, ``backbone.``, ``encoder.`` prefixes stripped; wrapper dicts (``state_dict``,
  ``model``) unwrapped; the public layouts of ``layouts.py`` (torchvision and RadImageNet
  ResNet-50, open_clip/BiomedCLIP and OpenAI-CLIP ViT-B/16) mapped onto timm's names, a layout of
  another family than the architecture refused by name; non-persistent Swin buffers (``relative_position_index``, ``attn_mask``)
  dropped; a classifier head of another shape (e.g. 1000 ImageNet classes) dropped (it starts fresh);
* input convolution: channel count adapted (``timm.models.adapt_input_conv``), ViT patch kernel
  resampled when the patch size differs (``timm.layers.resample_patch_embed``);
* ViT ``pos_embed`` resampled to the token grid of the crop (``resample_abs_pos_embed``), Swin
  ``relative_position_bias_table`` resized to the window (``resize_rel_pos_bias_table``).
Anything still missing, unexpected or mis-shaped raises ``FoundationError`` naming the keys and
the detected layout; so does a truncated or corrupt file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed, resize_rel_pos_bias_table
from timm.models import adapt_input_conv

from fedprostate.models.backbones import create_backbone, family, head_prefixes, input_conv_key
from fedprostate.models.layouts import clip_hint, detect_layout, to_timm, wrong_family_hint

CHANNELS = ["t2w", "adc", "hbv"]
_PREFIXES = ("module.", "backbone.", "encoder.")
_NON_PERSISTENT = ("relative_position_index", "attn_mask")
_HUB_SCHEMES = ("timm:", "hf-hub:")


class FoundationError(ValueError):
    """A foundation checkpoint that cannot be used for the requested backbone."""


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise FoundationError(
            f"{path}: unreadable checkpoint (truncated or corrupt? {reason})"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FoundationError(f"{path}: not a state dict of tensors")
    return state


def checkpoint_meta(path: str | Path) -> dict | None:
    """The JSON metadata written next to a checkpoint by ``save_checkpoint``, if any."""
    meta_path = Path(path).with_suffix(".json")
    return json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None


def remap_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (``module.``, ``backbone.``, ``encoder.``, repeatedly)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _adapt_tensor(key: str, value: torch.Tensor, target: torch.Tensor, model, arch: str):
    if value.shape == target.shape:
        return value
    if key == input_conv_key(arch):
        if value.shape[1] != target.shape[1]:
            value = adapt_input_conv(target.shape[1], value, base_chans=value.shape[1])
        if value.shape[-2:] != target.shape[-2:]:
            value = resample_patch_embed(value, list(target.shape[-2:]))
        return value
    if key == "pos_embed":
        grid = list(model.patch_embed.grid_size)
        return resample_abs_pos_embed(value, grid, num_prefix_tokens=model.num_prefix_tokens)
    if key.endswith("relative_position_bias_table"):
        window = (int(round(target.shape[0] ** 0.5)) + 1) // 2
        with warnings.catch_warnings():  # timm's interpolation emits torch deprecation noise
            warnings.simplefilter("ignore", UserWarning)
            return resize_rel_pos_bias_table(value, (window, window), tuple(target.shape))
    return value


def adapt_state(
    state: dict, arch: str, crop: int, source: str = "checkpoint", in_chans: int = 3
) -> dict:
    """Remap and adapt a state dict to ``create_backbone(arch, crop, in_chans=in_chans)``; strict
    key/shape check."""
    model = create_backbone(arch, crop=crop, in_chans=in_chans)
    reference = model.state_dict()
    heads = tuple(head_prefixes(model))
    state = remap_keys(state)
    layout = detect_layout(state)
    if hint := wrong_family_hint(layout, family(arch), arch):
        raise FoundationError(f"{source}: cannot load into {arch}: {hint}")
    try:
        state = to_timm(state, layout, model)
    except ValueError as exc:
        raise FoundationError(f"{source}: {exc}") from None
    adapted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in reference and key.endswith(_NON_PERSISTENT):
            continue
        if key.startswith(heads) and key in reference and value.shape != reference[key].shape:
            continue  # a head for other classes: ours starts fresh
        adapted[key] = (
            _adapt_tensor(key, value, reference[key], model, arch) if (key in reference) else value
        )
    unexpected = sorted(k for k in adapted if k not in reference)
    missing = sorted(k for k in reference if k not in adapted and not k.startswith(heads))
    mismatched = [
        f"{k} {tuple(adapted[k].shape)} vs {tuple(reference[k].shape)}"
        for k in adapted
        if k in reference and adapted[k].shape != reference[k].shape
    ]
    problems = [hint] if (hint := clip_hint(layout, unexpected)) else []
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}")
    if missing:
        problems.append(f"missing keys {missing[:8]}")
    if mismatched:
        problems.append(f"shape mismatch (checkpoint vs {arch}@{crop}px) {mismatched[:8]}")
    if problems:
        raise FoundationError(
            f"{source}: cannot load into {arch} (key layout: {layout}): " + "; ".join(problems)
        )
    return {k: v.to(reference[k].dtype) for k, v in adapted.items()}


def load_foundation(
    path: str | Path, arch: str, crop: int, in_chans: int = 3
) -> dict[str, torch.Tensor]:
    """A backbone state dict for ``create_backbone(arch, crop)`` (head keys may be absent)."""
    spec = str(path)
    if not Path(spec).exists() and spec.startswith(_HUB_SCHEMES):
        import timm  # hub download: only where a network exists

        name = spec.removeprefix("timm:")
        state = timm.create_model(name, pretrained=True).state_dict()
        return adapt_state(state, arch, crop, source=spec, in_chans=in_chans)
    path = Path(spec)
    if not path.is_file():
        raise FoundationError(f"{path}: no such checkpoint file")
    meta = checkpoint_meta(path)
    if meta is not None:
        if meta.get("arch") not in (None, arch):
            raise FoundationError(f"{path}: checkpoint is for {meta['arch']!r}, not {arch!r}")
        if meta.get("channels") not in (None, CHANNELS):
            raise FoundationError(f"{path}: channel order {meta['channels']} is not {CHANNELS}")
    return adapt_state(_read_state(path), arch, crop, source=str(path), in_chans=in_chans)


def init_from_foundation(
    model: nn.Module, path: str | Path, arch: str, crop: int, in_chans: int = 3
) -> str:
    """Load foundation weights into a fresh backbone (head excepted); return their sha256."""
    state = load_foundation(path, arch, crop, in_chans)
    result = model.load_state_dict(state, strict=False)
    heads = tuple(head_prefixes(model))
    not_head = [k for k in result.missing_keys if not k.startswith(heads)]
    if not_head or result.unexpected_keys:
        raise FoundationError(
            f"{path}: missing {not_head[:5]}, unexpected {result.unexpected_keys}"
        )
    return backbone_sha256(state)


def backbone_sha256(model_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over sorted key names, dtypes, shapes and raw bytes of every tensor."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module | dict, meta: dict) -> dict:
    """Write ``path`` (.safetensors) and ``path.json``; return the metadata written.

    ``meta`` must hold ``arch``, ``crop`` and ``normalization``; ``channels`` defaults to
    ``["t2w", "adc", "hbv"]``; ``sha256`` is computed here.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: checkpoints are written as .safetensors")
    missing = [k for k in ("arch", "crop", "normalization") if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    state = model.state_dict() if isinstance(model, nn.Module) else model
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    full_meta = {"channels": CHANNELS, **meta, "sha256": backbone_sha256(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"arch": str(meta["arch"]), "sha256": full_meta["sha256"]})
    path.with_suffix(".json").write_text(
        json.dumps(full_meta, indent=2, default=str) + "\n", encoding="utf-8"
    )
    return full_meta


def update_checkpoint_meta(path: str | Path, **entries) -> dict:
    """Add ``entries`` to the JSON beside a checkpoint (created if absent), written atomically."""
    meta_path = Path(path).with_suffix(".json")
    meta = checkpoint_meta(path) or {}
    meta.update(entries)
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, meta_path)
    return meta
