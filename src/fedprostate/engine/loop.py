"""The one local training / evaluation loop, used by centralized, local-only and federated runs.

Plain PyTorch: who holds which data and who averages differs between run kinds, this loop does not.
Every random draw (shuffling, augmentation, dropout) comes from generators seeded by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedprostate.config import APART_SOURCES, TrainConfig


@dataclass
class TrainResult:
    loss: float  # mean training loss over the local steps
    num_examples: int  # examples in the local training set (FedAvg weight)
    steps: int
    seen: int  # examples processed (steps × batch)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    rows = getattr(dataset, "rows", None)
    if rows is not None:
        return np.asarray([int(r["label"]) for r in rows], dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def class_weights(
    labels: np.ndarray, num_classes: int = 2, sample_weights: np.ndarray | None = None
) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1; a class absent locally gets weight 1.
    With ``sample_weights`` a sample counts as its weight."""
    counts = np.bincount(labels, weights=sample_weights, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 1.0)
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def sample_weights(dataset: Dataset, sampled_weight: float) -> np.ndarray:
    """Loss weight of every item: 1 for findings, ``sampled_weight`` for sampled tissue."""
    rows = getattr(dataset, "rows", None)
    if rows is None:
        return np.ones(len(dataset), dtype=np.float32)
    return np.array(
        [sampled_weight if r.get("source") in APART_SOURCES else 1.0 for r in rows],
        dtype=np.float32,
    )


class _Weighted(Dataset):
    """(x, y, w) items: the dataset's items with their loss weight."""

    def __init__(self, dataset: Dataset, weights: np.ndarray):
        self.dataset, self.weights = dataset, torch.from_numpy(weights)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return x, y, self.weights[i]


def lr_scale(cfg: TrainConfig, server_round: int, rounds: int) -> float:
    """Learning-rate factor of a round (1-based): linear warm-up, then constant or cosine
    decay to 5 % at the last round (``train.schedule``, ``train.warmup_rounds``)."""
    if cfg.warmup_rounds and server_round <= cfg.warmup_rounds:
        return server_round / (cfg.warmup_rounds + 1)
    if cfg.schedule == "constant" or rounds <= cfg.warmup_rounds + 1:
        return 1.0
    progress = (server_round - cfg.warmup_rounds - 1) / (rounds - cfg.warmup_rounds - 1)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Label-preserving augmentation of a [B,C,H,W] batch: left-right flip, small shift, gain.

    Left-right is a true anatomical symmetry of the prostate; up-down (anterior-posterior) is not,
    so it is never flipped. Intensity gain stays small so ADC keeps its physical meaning.
    """
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    max_shift = max(1, x.shape[-1] // 16)
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=gen)
    rolled = [
        torch.roll(xi, (int(s[0]), int(s[1])), dims=(-2, -1))
        for xi, s in zip(x, shifts, strict=True)
    ]
    x = torch.stack(rolled)
    gain = 1.0 + 0.05 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1)
    return x * gain


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def set_train_mode(model: nn.Module) -> None:
    """Train mode, but normalisation layers with no trainable parameters stay in eval mode.

    A frozen BatchNorm must not update its running statistics: they belong to the foundation
    model, and every client must keep the same ones for averaged updates to mean anything.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def autocast(precision: str, device: torch.device):
    """bf16 autocast where ``train.precision`` asks for it ("auto": on CUDA only, so CPU runs stay
    fp32 and bit-reproducible); matmuls and convolutions in bf16, the loss in fp32."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def train_local(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    seed: int,
    global_params: dict[str, torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
    teacher: nn.Module | None = None,
    kd_temperature: float = 2.0,
    kd_alpha: float = 0.5,
    lr_scale: float = 1.0,
) -> TrainResult:
    """Train ``model``'s trainable parameters on ``dataset`` for cfg.epochs (> 0) or cfg.steps.

    The learning rate is ``cfg.lr × lr_scale`` (the round's schedule, see :func:`lr_scale`).
    Sampled normal tissue weighs ``cfg.sampled_weight`` in the loss (0: left out).

    ``global_params`` (trainable name → tensor) enables FedProx's proximal term with cfg.prox_mu.
    ``teacher`` enables knowledge distillation: loss = (1 − α)·CE(labels) + α·T²·KL(teacher_T ‖
    student_T), with temperature-softened probabilities (Hinton et al., 2015); teacher frozen.
    """
    weights = sample_weights(dataset, cfg.sampled_weight)
    if (weights > 0).sum() == 0:
        raise ValueError("train_local: empty training set")
    if (weights == 0).any():
        keep = np.flatnonzero(weights > 0)
        dataset, weights = torch.utils.data.Subset(dataset, keep.tolist()), weights[keep]
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    model.to(device)
    torch.manual_seed(seed)  # dropout inside the model
    gen = torch.Generator().manual_seed(seed)
    labels = dataset_labels(dataset)
    loader = DataLoader(
        _Weighted(dataset, weights),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=gen,
        drop_last=len(dataset) > cfg.batch_size,
    )
    weight = class_weights(labels, sample_weights=weights) if cfg.class_weighting else None
    per_class = (weight if weight is not None else torch.ones(2)).to(device)
    criterion = nn.CrossEntropyLoss(weight=per_class, reduction="none")
    params = _trainable(model)
    if not params:
        raise ValueError("train_local: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(
        [p for _, p in params], lr=cfg.lr * lr_scale, weight_decay=cfg.weight_decay
    )
    anchors = None
    if cfg.prox_mu > 0 and global_params is not None:
        anchors = [(p, global_params[n].to(device)) for n, p in params if n in global_params]

    total_steps = cfg.epochs * len(loader) if cfg.epochs > 0 else cfg.steps
    set_train_mode(model)
    losses: list[float] = []
    seen = 0
    step = 0
    while step < total_steps:
        for x, y, w in loader:
            if step >= total_steps:
                break
            x, y, w = x.to(device), y.to(device), w.to(device)
            if cfg.augment:
                x = augment_batch(x, gen)
            with autocast(cfg.precision, device):
                logits = model(x).float()
            # the class-weighted mean of torch's CrossEntropyLoss, each sample also weighted
            loss = (criterion(logits, y) * w).sum() / (per_class[y] * w).sum()
            if teacher is not None:
                loss = (1 - kd_alpha) * loss + kd_alpha * kd_loss(
                    logits, teacher, x, kd_temperature
                )
            if anchors:
                prox = sum(((p - a) ** 2).sum() for p, a in anchors)
                loss = loss + 0.5 * cfg.prox_mu * prox
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss became {value} at step {step}")
            losses.append(value)
            seen += len(y)
            step += 1
            if progress:
                progress(step, total_steps)
    model.eval()
    return TrainResult(
        loss=float(np.mean(losses)), num_examples=len(dataset), steps=step, seen=seen
    )


def kd_loss(
    student_logits: torch.Tensor, teacher: nn.Module, x: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T²-scaled KL divergence between temperature-softened teacher and student distributions."""
    with torch.no_grad():
        teacher.eval()
        soft_targets = torch.softmax(teacher(x) / temperature, dim=1)
    log_student = torch.log_softmax(student_logits / temperature, dim=1)
    return nn.functional.kl_div(log_student, soft_targets, reduction="batchmean") * temperature**2


@torch.no_grad()
def predict_scores(
    model: nn.Module, dataset: Dataset, batch_size: int = 64, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """csPCa probabilities (softmax class 1) and labels for every item, in dataset order."""
    model.to(device).eval()
    scores, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = model(x.to(device))
        scores.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())
        labels.append(y.numpy())
    if not scores:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(scores), np.concatenate(labels)


def headline_mask(dataset: Dataset) -> np.ndarray:
    """Rows that answer the clinical question (``config.HEADLINE_SOURCES``/organ slices), not
    sampled normal tissue: what every round's validation metric and model choice use."""
    rows = getattr(dataset, "rows", None)
    if rows is None:
        return np.ones(len(dataset), dtype=bool)
    return np.array([r.get("source") not in APART_SOURCES for r in rows], dtype=bool)


def score_dataset(
    model: nn.Module, dataset: Dataset, device: str = "cpu"
) -> tuple[dict[str, float], np.ndarray]:
    """(round metrics over the headline rows, scores of every row in dataset order)."""
    if len(dataset) == 0:
        return score_metrics(np.zeros(0, np.int64), np.zeros(0, np.float32)), np.zeros(0)
    scores, labels = predict_scores(model, dataset, device=device)
    mask = headline_mask(dataset)
    return score_metrics(labels[mask], scores[mask]), scores


def score_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Quick metrics used every round (the full evaluation with CIs lives in fedprostate.eval)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    eps = 1e-7
    p = np.clip(scores.astype(np.float64), eps, 1 - eps)
    out = {
        "n": float(len(labels)),
        "loss": float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
        if len(labels)
        else float("nan"),
    }
    if len(np.unique(labels)) == 2:
        out["auroc"] = float(roc_auc_score(labels, scores))
        out["ap"] = float(average_precision_score(labels, scores))
    else:
        out["auroc"] = float("nan")
        out["ap"] = float("nan")
    return out
