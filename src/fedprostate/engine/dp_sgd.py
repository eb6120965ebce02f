"""DP-SGD inside one site's training, with the patient as the privacy unit (Opacus).

Opacus' ``GradSampleModule`` computes a gradient per crop for the trainable tensors only (LoRA A/B,
adapters, head: the frozen backbone gets no hooks); this loop sums those rows per patient, and
Opacus' ``DPOptimizer`` then clips each patient's summed gradient to ``privacy.dp_sgd_clip``, adds
N(0, (sigma C)^2) to the sum and divides by the expected number of patients per step. Patients are
drawn by Opacus' ``UniformWithReplacementSampler`` (Poisson: each patient independently with
probability q per step, all of their crops together), so the accountant's subsampled Gaussian
mechanism (``engine.privacy``) is exactly what runs, with one patient per record.

What differs from :func:`engine.loop.train_local`, and why:

* no class weights: they would be computed from the site's private labels (a data-dependent
  loss); each crop's loss is weighted only by the public ``train.sampled_weight``;
* no ``train.grad_clip``: the per-patient clip replaces it;
* the patient sampling and the noise draw from a generator seeded by the OS, never by the
  run's public seed (which would let anyone regenerate the noise); augmentation stays seeded.
* not supported (refused by the configuration): full fine-tuning, attention LoRA on Swin (window
  partitioning gives Opacus per-window rows), FedProx and distillation.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fedprostate.config import PrivacyConfig, TrainConfig
from fedprostate.engine.loop import TrainResult, augment_batch, sample_weights, set_train_mode
from fedprostate.engine.privacy import INSTALL_HINT, dp_sgd_sample_rate, dp_sgd_steps


def patient_groups(dataset: Dataset, keep: np.ndarray) -> list[np.ndarray]:
    """Indices (into ``dataset``) of each patient's kept crops; a dataset without index rows
    counts every item as its own patient."""
    rows = getattr(dataset, "rows", None)
    groups: dict[str, list[int]] = {}
    for i in keep.tolist():
        pid = str(rows[i].get("patient_id", i)) if rows is not None else str(i)
        groups.setdefault(pid, []).append(i)
    return [np.asarray(v) for _, v in sorted(groups.items())]


def _secure_generator() -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(63))


def train_local_private(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    privacy: PrivacyConfig,
    seed: int,
    lr_scale: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Per-patient DP-SGD on ``model``'s trainable tensors (see the module docstring)."""
    try:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    weights = sample_weights(dataset, cfg.sampled_weight)
    keep = np.flatnonzero(weights > 0)
    if keep.size == 0:
        raise ValueError("train_local_private: empty training set")
    groups = patient_groups(dataset, keep)
    q = dp_sgd_sample_rate(cfg, len(dataset))
    total_steps = dp_sgd_steps(cfg, q)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    model.to(device)
    torch.manual_seed(seed)
    augment_gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_local_private: the model has no trainable parameters")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        warnings.filterwarnings("ignore", message=".*full_backward_hook.*")
        gsm = GradSampleModule(model, loss_reduction="sum")
        optimizer = DPOptimizer(
            torch.optim.AdamW(params, lr=cfg.lr * lr_scale, weight_decay=cfg.weight_decay),
            noise_multiplier=privacy.dp_sgd_noise,
            max_grad_norm=privacy.dp_sgd_clip,
            expected_batch_size=q * len(groups),
            loss_reduction="mean",
            generator=_secure_generator(),
        )
    sampler = UniformWithReplacementSampler(
        num_samples=len(groups), sample_rate=q, generator=_secure_generator(), steps=total_steps
    )
    criterion = nn.CrossEntropyLoss(reduction="none")
    w_all = torch.from_numpy(weights)
    set_train_mode(model)
    losses: list[float] = []
    seen = step = 0
    try:
        for chosen in sampler:
            optimizer.zero_grad(set_to_none=True)
            idx = [int(i) for p in chosen for i in groups[p]]
            if idx:
                slot = torch.tensor([k for k, p in enumerate(chosen) for _ in groups[p]])
                items = [dataset[i] for i in idx]
                x = torch.stack([it[0] for it in items]).to(device)
                y = torch.tensor([int(it[1]) for it in items], device=device)
                if cfg.augment:
                    x = augment_batch(x, augment_gen)
                per_crop = criterion(gsm(x), y) * w_all[idx].to(device)
                with warnings.catch_warnings():  # the frozen input needs no gradient: expected
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    per_crop.sum().backward()
                for p in params:  # one row per patient: the sum of their crops' gradients
                    rows = p.grad_sample
                    summed = torch.zeros((len(chosen), *rows.shape[1:]), dtype=rows.dtype)
                    p.grad_sample = summed.index_add_(0, slot.to(rows.device), rows)
                value = float(per_crop.detach().sum() / w_all[idx].sum())
                if not math.isfinite(value):
                    raise FloatingPointError(f"training loss became {value} at step {step}")
                losses.append(value)
                seen += len(idx)
            else:  # no patient drawn: the step still adds noise (the accountant counts it)
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            optimizer.step()
            step += 1
            if progress:
                progress(step, total_steps)
    finally:
        gsm._close()  # the model is cached per process: no Opacus hooks may stay on it
        for p in params:
            for attr in ("grad_sample", "summed_grad"):
                if hasattr(p, attr):
                    delattr(p, attr)
            p.grad = None
    model.eval()
    return TrainResult(
        loss=float(np.mean(losses)) if losses else float("nan"),
        num_examples=int(keep.size),
        steps=step,
        seen=seen,
    )
