"""A deployable model bundle: one folder a hospital can run without peft or the training code.

Layout (written by ``fedprostate.runs.export.export_run``)::

    BUNDLE/
      bundle.json        arch, crop, spacing, channel order, preprocessing, threshold, hashes;
                         ``bundle_sha256`` = SHA-256 of every other field (canonical JSON), so
                         the weights' hash, the threshold and the preprocessing are all covered
      model.safetensors  the merged model's state dict (a plain timm module, fp32)
      model.onnx         the same model for onnxruntime (optional; input "crops" [B,3,H,W])
      MODEL_CARD.md      data, sites, metrics with CIs, intended use (research only)

LoRA is merged into the base weights at export, so the state dict has the plain timm keys.
Bottleneck adapters are non-linear and cannot be merged: they are kept as the project's own
peft-free modules (``fedprostate.models.adapters``), re-attached here from ``bundle.json``
(``adapter`` = {dim, blocks}, written by ``models.finetune.inference_structure``) before the
weights load. Loading never imports peft.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

from fedprostate.models.adapters import add_adapters
from fedprostate.models.backbones import create_backbone
from fedprostate.models.foundation import backbone_sha256

BUNDLE_VERSION = 1
BUNDLE_JSON = "bundle.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
MODEL_CARD = "MODEL_CARD.md"
REQUIRED_KEYS = ("arch", "crop", "spacing", "channels", "mode", "n_slices", "weights_sha256")


class BundleError(ValueError):
    """A folder that is not a usable model bundle (the message names the file)."""


def read_bundle_meta(path: str | Path) -> dict:
    """The parsed ``bundle.json`` of a bundle folder, checked for the keys inference needs."""
    meta_path = Path(path) / BUNDLE_JSON
    if not meta_path.is_file():
        raise BundleError(f"{meta_path}: not found (not a model bundle; see `fedprostate export`)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path}: invalid JSON ({exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise BundleError(f"{meta_path}: missing keys {missing}")
    if meta.get("bundle_version", BUNDLE_VERSION) > BUNDLE_VERSION:
        raise BundleError(f"{meta_path}: bundle version {meta['bundle_version']} is too new")
    return meta


def bundle_sha256(meta: dict) -> str:
    """SHA-256 of a bundle's metadata without its own ``bundle_sha256`` (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "bundle_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def verify_bundle_meta(path: str | Path, meta: dict, expected_sha256: str = "") -> str:
    """The bundle's hash, checked against ``bundle.json`` and, if given, the published one."""
    actual = bundle_sha256(meta)
    meta_path = Path(path) / BUNDLE_JSON
    if "bundle_sha256" in meta and meta["bundle_sha256"] != actual:
        raise BundleError(
            f"{meta_path}: contents differ from its bundle_sha256 (threshold, preprocessing or "
            "hashes edited after export)"
        )
    if expected_sha256 and expected_sha256.lower() != meta.get("bundle_sha256", actual):
        raise BundleError(
            f"{meta_path}: bundle sha256 {meta.get('bundle_sha256', actual)} is not the expected "
            f"{expected_sha256} (get the consortium's published bundle)"
        )
    return actual


def build_plain_model(meta: dict) -> nn.Module:
    """The untrained module a bundle's weights load into (timm backbone [+ adapters])."""
    model = create_backbone(
        meta["arch"],
        crop=int(meta["crop"]),
        num_classes=int(meta.get("num_classes", 2)),
        in_chans=len(meta["channels"]) * int(meta["n_slices"]),
    )
    adapter = meta.get("adapter")
    if adapter:
        add_adapters(model, meta["arch"], int(adapter["dim"]), int(adapter["blocks"]), seed=0)
    return model


def load_bundle(
    path: str | Path, verify: bool = True, expected_sha256: str = ""
) -> tuple[nn.Module, dict]:
    """(frozen eval-mode model, bundle metadata). ``verify`` checks the weights' sha256 and the
    bundle hash; ``expected_sha256`` is the bundle hash published by the consortium."""
    path = Path(path)
    meta = read_bundle_meta(path)
    if verify or expected_sha256:
        verify_bundle_meta(path, meta, expected_sha256)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{weights}: not found")
    state = load_file(str(weights))
    if verify and backbone_sha256(state) != meta["weights_sha256"]:
        raise BundleError(f"{weights}: sha256 differs from bundle.json (corrupt or replaced)")
    model = build_plain_model(meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise BundleError(f"{weights}: does not fit {meta['arch']} ({first})") from exc
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), meta


@torch.no_grad()
def predict_proba(
    model: nn.Module, crops: np.ndarray, batch_size: int = 64, temperature: float = 1.0
) -> np.ndarray:
    """csPCa probabilities (softmax class 1 of logits / ``temperature``, the bundle's
    validation-fitted calibration) of crops [N, C, H, W] (float32)."""
    model.eval()
    out = []
    for start in range(0, len(crops), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(crops[start : start + batch_size], np.float32))
        logits = model(x).float() / float(temperature)
        out.append(torch.softmax(logits, dim=1)[:, 1].numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def load_teacher(path: str | Path) -> nn.Module:
    """A frozen, eval-mode teacher from an exported bundle folder (no peft needed)."""
    model, _ = load_bundle(path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
