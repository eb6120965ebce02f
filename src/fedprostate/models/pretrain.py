"""Self-supervised pre-training of a backbone on unlabeled crops (objectives in ``ssl.py``).

:class:`Pretrainer` holds everything a run needs to continue after an interruption — the
objective's weights (student, teacher, heads), the AdamW state, the epoch, the loss history and
every random state — in one :meth:`~Pretrainer.state_dict`; ``fedprostate pretrain`` saves it
after every epoch and ``--resume`` continues from it, bit for bit the run that was not
interrupted. The learning rate warms up linearly over the first epoch (at most 10 % of the
steps) and then follows a cosine to 1 % of ``lr``. On a GPU (``device="cuda"``) the forward
passes run under bf16 autocast; random numbers are always drawn on the CPU.

Every random draw (initialisation, shuffling, masks, augmentations, dropout) is made under a
fork of the global RNG seeded with ``seed`` or from explicit generators, so a run is
reproducible and leaves the caller's RNG state untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from fedprostate.models.backbones import create_backbone
from fedprostate.models.ssl import SSL_METHODS, make_task

METHODS = SSL_METHODS


class PretrainStateError(ValueError):
    """A saved pre-training state that does not belong to the run asked for."""


@dataclass(frozen=True)
class PretrainSettings:
    method: str = "simmim"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    device: str = "cpu"
    bf16: bool | None = None  # bf16 autocast; None = on for CUDA, off elsewhere

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("need epochs >= 1 and batch_size >= 2")

    @property
    def autocast(self) -> bool:
        return self.device.startswith("cuda") if self.bf16 is None else self.bf16


def lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``lr`` to ``lr / 100``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batch bounds over ``n`` items; a 1-item tail batch (breaks SimCLR/BatchNorm) is dropped."""
    steps = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    return [s for s in steps if s[1] - s[0] >= 2]


class Pretrainer:
    """One self-supervised pre-training run of ``arch`` at ``crop`` px (resumable)."""

    def __init__(
        self, arch: str, crop: int, settings: PretrainSettings, backbone: nn.Module | None = None
    ):
        self.arch, self.crop, self.settings = arch, crop, settings
        self.device = torch.device(settings.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            if backbone is None:
                backbone = create_backbone(arch, crop=crop)
            self.task = make_task(settings.method, backbone, arch, crop).to(self.device)
            self.torch_rng = torch.get_rng_state()
        params = [p for p in self.task.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.epoch = 0
        self.history: list[float] = []
        self.throughput: list[float] = []  # crops per second of each epoch
        self.n_crops: int | None = None

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "kind": "fedprostate-pretrain-state",
            "arch": self.arch,
            "crop": self.crop,
            "settings": asdict(self.settings),
            "epoch": self.epoch,
            "history": list(self.history),
            "throughput": list(self.throughput),
            "n_crops": self.n_crops,
            "task": {k: v.detach().cpu() for k, v in self.task.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": self.torch_rng,
        }

    def check_compatible(self, state: dict, source: str = "state") -> None:
        """Refuse a state of another method, backbone or crop (named in the message)."""
        if state.get("kind") != "fedprostate-pretrain-state":
            raise PretrainStateError(f"{source}: not a fedprostate pre-training state")
        saved = state["settings"]
        for what, mine, theirs in (
            ("method", self.settings.method, saved.get("method")),
            ("arch", self.arch, state.get("arch")),
            ("crop", self.crop, state.get("crop")),
        ):
            if mine != theirs:
                raise PretrainStateError(
                    f"{source}: cannot resume: it was pre-trained with {what} {theirs!r}, "
                    f"this run asks for {mine!r}"
                )

    def load_state_dict(self, state: dict, source: str = "state") -> None:
        self.check_compatible(state, source)
        self.task.load_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.torch_rng = state["torch_rng"]
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.throughput = list(state.get("throughput", []))
        self.n_crops = state.get("n_crops")

    # ---- training ------------------------------------------------------------------------
    def fit(
        self,
        crops: torch.Tensor,
        progress: bool = True,
        on_epoch: Callable[[Pretrainer], None] | None = None,
    ) -> list[float]:
        """Train from the current epoch up to ``settings.epochs`` on crops [N, 3, H, H]; call
        ``on_epoch(self)`` after each epoch (e.g. to save a resumable state)."""
        check_crops(crops, self.crop)
        n = int(crops.shape[0])
        if self.n_crops is not None and self.n_crops != n:
            raise PretrainStateError(
                f"cannot resume: the state was trained on {self.n_crops} crops, this pool has {n}"
            )
        self.n_crops = n
        s = self.settings
        if self.device.type == "cuda":
            crops = crops.to(self.device)
        steps = batches(n, s.batch_size)
        total = s.epochs * len(steps)
        warmup = min(len(steps), max(1, total // 10))
        columns = (
            TextColumn(f"pretrain {s.method} {self.arch}@{self.crop}px"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
        )
        with (
            torch.random.fork_rng(devices=[]),
            Progress(*columns, disable=not progress) as bar,
        ):
            torch.set_rng_state(self.torch_rng)
            done = self.epoch * len(steps)
            bar_task = bar.add_task("pretrain", total=total, completed=done, info="")
            self.task.train()
            while self.epoch < s.epochs:
                mean_loss, rate = self._epoch(crops, steps, done, total, warmup, bar, bar_task)
                done += len(steps)
                self.epoch += 1
                self.history.append(mean_loss)
                self.throughput.append(rate)
                self.torch_rng = torch.get_rng_state()
                if on_epoch is not None:
                    on_epoch(self)
            self.task.eval()
        return self.history

    def _epoch(self, crops, steps, done, total, warmup, bar, bar_task) -> tuple[float, float]:
        s = self.settings
        order = torch.randperm(crops.shape[0], generator=self.generator)
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        for k, (lo, hi) in enumerate(steps):
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(done + k, total, warmup, s.lr)
            x = crops[order[lo:hi].to(crops.device)].to(self.device).float()
            value = ssl_step(self.task, self.optimizer, x, self.generator, s.autocast)
            self.task.after_step((done + k + 1) / total)
            loss_sum += value
            seen += hi - lo
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.update(
                bar_task,
                advance=1,
                info=f"epoch {self.epoch + 1}/{s.epochs} loss {value:.4f} {rate:.0f} img/s",
            )
        return loss_sum / len(steps), seen / max(time.perf_counter() - t0, 1e-9)

    def encoder(self) -> nn.Module:
        """The backbone to keep (DINO: the teacher), on the CPU."""
        return self.task.encoder().to("cpu")


def ssl_step(task: nn.Module, optimizer, x: torch.Tensor, generator, autocast: bool) -> float:
    """One optimizer step of the objective on batch ``x``; the loss (finite, else an error)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = task.loss(x, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    value = float(loss.item())
    if not math.isfinite(value):
        raise FloatingPointError(f"pre-training loss became {value}: lower the learning rate")
    return value


def local_round(
    task: nn.Module,
    crops: torch.Tensor,
    epochs: int,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
    span: tuple[float, float] = (0.0, 1.0),
    device: str = "cpu",
    autocast: bool = False,
) -> tuple[float, int]:
    """A site's local work in federated pre-training: ``epochs`` epochs over ``crops`` (or
    ``steps`` steps when ``epochs`` is 0) with a fresh AdamW at ``lr``; DINO's teacher momentum
    follows the run's progress from ``span[0]`` to ``span[1]``. Returns (mean loss, steps)."""
    check_crops(crops)
    n = int(crops.shape[0])
    plan: list[tuple[torch.Tensor, int, int]] = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        plan += [(order, lo, hi) for lo, hi in batches(n, batch_size)]
    while len(plan) < steps and not epochs:
        order = torch.randperm(n, generator=generator)
        plan += [(order, lo, hi) for lo, hi in batches(n, batch_size)][: steps - len(plan)]
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    task.to(device).train()
    total = 0.0
    for k, (order, lo, hi) in enumerate(plan):
        x = crops[order[lo:hi]].to(device).float()
        total += ssl_step(task, optimizer, x, generator, autocast)
        task.after_step(span[0] + (span[1] - span[0]) * (k + 1) / len(plan))
    task.eval()
    return total / len(plan), len(plan)


def task_state(task: nn.Module) -> dict[str, torch.Tensor]:
    """Every floating-point tensor of the objective (student, teacher, heads, DINO's centre):
    what a federated round sends. Integer buffers (BatchNorm's step count) stay local."""
    return {
        k: v.detach().cpu().float() for k, v in task.state_dict().items() if v.is_floating_point()
    }


def check_crops(crops: torch.Tensor, crop: int | None = None) -> None:
    if crops.ndim != 4 or crops.shape[1] != 3 or crops.shape[2] != crops.shape[3]:
        raise ValueError(f"crops must be [N, 3, H, H], got {tuple(crops.shape)}")
    if crop is not None and crops.shape[-1] != crop:
        raise ValueError(f"crops are {crops.shape[-1]} px, the backbone is built for {crop} px")
    if crops.shape[0] < 2:
        raise ValueError(f"need at least 2 crops to pre-train, got {crops.shape[0]}")


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
    device: str = "cpu",
) -> tuple[nn.Module, list[float]]:
    """Pre-train ``arch`` (or continue ``backbone``) on crops [N, 3, H, W]; return the encoder
    to keep and the mean loss of every epoch. The returned backbone keeps its (untrained)
    classifier head."""
    check_crops(crops)
    settings = PretrainSettings(method, epochs, batch_size, lr, weight_decay, seed, device)
    trainer = Pretrainer(arch, int(crops.shape[-1]), settings, backbone)
    history = trainer.fit(crops, progress=progress)
    return trainer.encoder(), history
