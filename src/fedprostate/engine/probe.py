"""Foundation quality measured where it is made: frozen features of reader findings → probes.

A backbone is frozen and its pooled features (what a frozen-backbone method such as LoRA or a
linear head starts from) are computed for the headline findings of a crop cache (reader marks
and label-free proposals, ``config.HEADLINE_SOURCES``; sampled normal tissue is never used).
Two probes are fitted on the *train* split, their one setting is chosen on *validation*, and the
*test* split is scored once:

* **linear probe**: standardised features → logistic regression (scikit-learn, lbfgs), the
  inverse regularisation ``C`` chosen from ``PROBE_C`` by validation AUROC;
* **kNN**: cosine similarity to the train findings, the ``k`` nearest vote with weights
  ``exp(sim / 0.07)`` (the weighted kNN of Wu et al. 2018, used by DINO), ``k`` from ``KNN_K``.

:func:`evaluate_foundation` probes a checkpoint and the same architecture with random weights
(the seed's initialisation) on the same findings and reports each test AUROC with its patient
bootstrap CI and the paired patient bootstrap of the difference (``eval.compare``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from fedprostate.config import HEADLINE_SOURCES
from fedprostate.data.cache import CropDataset, load_index, load_meta
from fedprostate.eval.compare import compare_models
from fedprostate.eval.metrics import auroc, auroc_ci
from fedprostate.models.backbones import create_backbone
from fedprostate.models.foundation import FoundationError, checkpoint_meta, init_from_foundation
from fedprostate.models.ssl import pooled
from fedprostate.records import predictions

PROBE_C = (1e-3, 1e-2, 1e-1, 1.0)
KNN_K = (10, 20, 50)
KNN_TEMPERATURE = 0.07
SPLITS = ("train", "val", "test")


@torch.no_grad()
def frozen_features(
    backbone: nn.Module, dataset: CropDataset, batch_size: int = 256, device: str = "cpu"
) -> np.ndarray:
    """Pooled features [N, D] of every item, in dataset order (backbone in eval mode)."""
    backbone.to(device).eval()
    out = []
    for lo in range(0, len(dataset), batch_size):
        x = torch.stack([dataset[i][0] for i in range(lo, min(lo + batch_size, len(dataset)))])
        out.append(pooled(backbone, x.to(device)).float().cpu())
    width = getattr(backbone, "num_features", 0)
    return torch.cat(out).numpy() if out else np.zeros((0, width), np.float32)


def linear_probe(feats: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict:
    """Logistic regression on train, ``C`` chosen on validation; scores of val and test."""
    scaler = StandardScaler().fit(feats["train"])
    z = {s: scaler.transform(f) for s, f in feats.items()}
    best = None
    for c in PROBE_C:
        model = LogisticRegression(C=c, max_iter=5000).fit(z["train"], labels["train"])
        val = model.decision_function(z["val"])
        score = auroc(labels["val"], val)
        if best is None or score > best["val_auroc"]:
            best = {
                "C": c,
                "val_auroc": score,
                "val": val,
                "test": model.decision_function(z["test"]),
            }
    return best


def knn_scores(bank: np.ndarray, bank_labels: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Weighted kNN vote for class 1 among the ``k`` most cosine-similar bank items."""
    b = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    sim = q @ b.T
    k = min(k, len(b))
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sim, top, axis=1) / KNN_TEMPERATURE)
    votes = (weights * bank_labels[top]).sum(axis=1)
    return votes / np.maximum(weights.sum(axis=1), 1e-12)


def knn_probe(feats: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict:
    best = None
    for k in KNN_K:
        val = knn_scores(feats["train"], labels["train"], feats["val"], k)
        score = auroc(labels["val"], val)
        if best is None or score > best["val_auroc"]:
            test = knn_scores(feats["train"], labels["train"], feats["test"], k)
            best = {"k": k, "val_auroc": score, "val": val, "test": test}
    return best


def probe_rows(cache: str | Path) -> dict[str, list[dict]]:
    """Headline findings of each split (never sampled tissue); both classes needed in each."""
    rows = [r for r in load_index(cache) if r.get("source") in HEADLINE_SOURCES]
    by_split = {s: [r for r in rows if r["split"] == s] for s in SPLITS}
    for split, part in by_split.items():
        if len({int(r["label"]) for r in part}) < 2:
            raise ValueError(
                f"{cache}: the {split} split has {len(part)} reader findings of one class only: "
                "a probe needs both classes in train, val and test"
            )
    return by_split


def probe_backbone(
    backbone: nn.Module, cache: str | Path, rows: dict[str, list[dict]], device: str = "cpu"
) -> dict:
    """Linear and kNN probes of a frozen backbone; test prediction rows for the comparisons."""
    feats = {
        s: frozen_features(backbone, CropDataset(cache, r), device=device) for s, r in rows.items()
    }
    labels = {s: np.array([int(x["label"]) for x in r]) for s, r in rows.items()}
    out = {}
    for name, fit in (("linear", linear_probe), ("knn", knn_probe)):
        result = fit(feats, labels)
        out[name] = {
            "setting": {"C": result["C"]} if "C" in result else {"k": result["k"]},
            "val_auroc": result["val_auroc"],
            "test_rows": predictions.from_index(rows["test"], result["test"]),
        }
    return out


def check_same_crop(ckpt: str | Path, meta: dict | None, cache: str | Path) -> tuple[str, int]:
    """(arch, crop) of a checkpoint, refused when the cache holds crops of another size."""
    cache_meta = load_meta(cache)
    crop = int(cache_meta["crop"])
    if meta is None:
        raise FoundationError(
            f"{ckpt}: no metadata ({Path(ckpt).with_suffix('.json').name}) naming its "
            "architecture; give --arch"
        )
    arch = str(meta["arch"])
    if int(meta.get("crop", crop)) != crop:
        raise FoundationError(
            f"{ckpt}: pre-trained on {meta['crop']} px crops, but {cache} holds {crop} px crops "
            f"({cache_meta.get('spacing')} mm); probe it on a cache of its own crop size"
        )
    channels = cache_meta.get("channel_names") or cache_meta.get("channels")
    if channels and meta.get("channels") and list(channels) != list(meta["channels"]):
        raise FoundationError(f"{ckpt}: channels {meta['channels']} but {cache} has {channels}")
    return arch, crop


def evaluate_foundation(
    ckpt: str | Path,
    cache: str | Path,
    arch: str | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    device: str = "cpu",
) -> dict:
    """Probes of the checkpoint vs the same architecture with random weights (seed ``seed``)."""
    t0 = time.time()
    meta = checkpoint_meta(ckpt)
    if arch is not None:
        meta = {**(meta or {}), "arch": arch}
    arch, crop = check_same_crop(ckpt, meta, cache)
    rows = probe_rows(cache)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random_init = create_backbone(arch, crop=crop)
        pretrained = create_backbone(arch, crop=crop)
    init_from_foundation(pretrained, ckpt, arch, crop)
    probes = {
        "pretrained": probe_backbone(pretrained, cache, rows, device),
        "random": probe_backbone(random_init, cache, rows, device),
    }
    report = {
        "cache": str(Path(cache).resolve()),
        "arch": arch,
        "crop": crop,
        "seed": seed,
        "n_findings": {s: len(r) for s, r in rows.items()},
        "n_patients_test": len({(r["site"], r["patient_id"]) for r in rows["test"]}),
    }
    for probe in ("linear", "knn"):
        mine, base = probes["pretrained"][probe], probes["random"][probe]
        cmp = compare_models(base["test_rows"], mine["test_rows"], n_boot=n_boot, seed=seed)
        report[probe] = {
            "pretrained": _summary(mine, n_boot, seed),
            "random": _summary(base, n_boot, seed),
            "delta": {k: cmp["bootstrap"][k] for k in ("delta", "low", "high", "p_value")},
        }
    report["seconds"] = round(time.time() - t0, 1)
    return report


def compare_checkpoints(
    ckpt_a: str | Path, ckpt_b: str | Path, cache: str | Path, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Paired patient bootstrap of B − A for each probe (e.g. federated vs central pre-training
    of the same architecture on the same pool)."""
    rows = probe_rows(cache)
    probes = []
    for ckpt in (ckpt_a, ckpt_b):
        arch, crop = check_same_crop(ckpt, checkpoint_meta(ckpt), cache)
        backbone = create_backbone(arch, crop=crop)
        init_from_foundation(backbone, ckpt, arch, crop)
        probes.append(probe_backbone(backbone, cache, rows))
    out = {}
    for probe in ("linear", "knn"):
        cmp = compare_models(probes[0][probe]["test_rows"], probes[1][probe]["test_rows"],
                             n_boot=n_boot, seed=seed)  # fmt: skip
        out[probe] = {k: cmp["bootstrap"][k] for k in ("auroc_a", "auroc_b", "delta", "low",
                                                       "high", "p_value")}  # fmt: skip
    return out


def _summary(probe: dict, n_boot: int, seed: int) -> dict:
    ci = auroc_ci(probe["test_rows"], n_boot=n_boot, seed=seed)
    return {
        **probe["setting"],
        "val_auroc": _round(probe["val_auroc"]),
        "test_auroc": _round(ci["estimate"]),
        "test_low": _round(ci["low"]),
        "test_high": _round(ci["high"]),
    }


def _round(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)
