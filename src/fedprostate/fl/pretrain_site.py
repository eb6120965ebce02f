"""Federated self-supervised pre-training as plain functions (the Flower apps only marshal).

Each site holds unlabeled studies of its own: the pool (``pretrain.pool``, a file written by
``fedprostate data pool``) split by study across ``pretrain.sites`` sites (``site0``, ``site1``,
…; whole studies per site, by a hash of the study key and the seed). In a round a site receives
the objective's global state — for DINO the student *and* the momentum teacher and its centre,
for SimMIM/SimCLR the encoder and its head — trains it locally on its crops (``train.epochs``
epochs, or ``train.steps`` steps), and sends it back through the same codecs as fine-tuning
(``compress.uplink``: its update relative to the global it received). The server averages with
the configured Flower strategy (FedAvg, FedAdam, …): averaging the teachers is averaging the
students' moving averages, which is the moving average of the averaged students.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch

from fedprostate.compress import delta
from fedprostate.compress.codecs import CodecSpec
from fedprostate.config import RunConfig
from fedprostate.data.unlabeled import UnlabeledPool, load_pool, split_pool
from fedprostate.engine.loop import lr_scale
from fedprostate.models.backbones import create_backbone
from fedprostate.models.pretrain import local_round, task_state
from fedprostate.models.ssl import make_task


def site_names(cfg: RunConfig) -> list[str]:
    return [f"site{i}" for i in range(cfg.pretrain.sites)]


def site_of_node(cfg: RunConfig, node_config: dict) -> str:
    """The site a Flower node serves: ``site`` (deployment) or ``partition-id`` (simulation)."""
    if "site" in node_config:
        return str(node_config["site"])
    if "partition-id" in node_config:
        names = site_names(cfg)
        pid = int(node_config["partition-id"])
        if pid >= len(names):
            raise ValueError(f"partition-id {pid} but only {len(names)} pre-training sites")
        return names[pid]
    raise ValueError("node config needs 'site' (deployment) or 'partition-id' (simulation)")


@lru_cache(maxsize=2)
def _pool(path: str) -> UnlabeledPool:
    return load_pool(path)


def site_crops(cfg: RunConfig, site: str) -> torch.Tensor:
    """This site's crops [n, 3, H, W] (float32)."""
    if not cfg.pretrain.pool:
        raise ValueError("pretrain.pool is not set: give the unlabeled pool file")
    pool = _pool(cfg.pretrain.pool)
    parts = split_pool(pool, cfg.pretrain.sites, cfg.seed)
    names = site_names(cfg)
    if site not in names:
        raise KeyError(f"no pre-training site {site!r} (sites: {', '.join(names)})")
    return torch.from_numpy(pool.crops[parts[names.index(site)]])


_TASKS: dict[tuple, torch.nn.Module] = {}


def build_task(cfg: RunConfig) -> torch.nn.Module:
    """The objective around a fresh backbone, initialised as central pre-training initialises it
    (seed ``seed``), cached per process."""
    key = (cfg.seed, cfg.model.arch, cfg.model.crop, cfg.pretrain.method)
    if key not in _TASKS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            backbone = create_backbone(cfg.model.arch, crop=cfg.model.crop)
            _TASKS[key] = make_task(cfg.pretrain.method, backbone, cfg.model.arch, cfg.model.crop)
    return _TASKS[key]


def global_numpy(task: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.float32, copy=True) for k, v in task_state(task).items()}


def load_global(task: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    expected = set(task_state(task))
    if set(arrays) != expected:
        diff = sorted(set(arrays) ^ expected)[:3]
        raise ValueError(f"pre-training state does not match the objective: {diff}")
    task.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=False
    )


def shapes_of(task: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in task_state(task).items()}


def round_seed(cfg: RunConfig, server_round: int, site: str) -> int:
    digest = hashlib.sha256(f"pretrain:{cfg.seed}:{server_round}:{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def pretrain_round(
    cfg: RunConfig,
    site: str,
    uplink: str,
    server_round: int,
    received: dict[str, np.ndarray],
    downlink: str = "fp32",
) -> tuple[dict[str, np.ndarray], dict]:
    """Train the received global objective on this site's crops; (wire tensors, metrics)."""
    task = build_task(cfg)
    global_tensors = delta.unpack_downlink(received, CodecSpec.parse(downlink), shapes_of(task))
    load_global(task, global_tensors)
    crops = site_crops(cfg, site)
    seed = round_seed(cfg, server_round, site)
    rounds = cfg.fl.rounds
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loss, steps = local_round(
            task,
            crops,
            epochs=cfg.train.epochs,
            steps=cfg.train.steps,
            batch_size=cfg.train.batch_size,
            lr=cfg.train.lr * lr_scale(cfg.train, server_round, rounds),
            weight_decay=cfg.pretrain.weight_decay,
            generator=torch.Generator().manual_seed(seed),
            span=((server_round - 1) / rounds, server_round / rounds),
            device=cfg.train.device,
            autocast=cfg.train.device.startswith("cuda"),
        )
    task.to("cpu")
    rng = np.random.default_rng(seed)
    out = delta.pack_uplink(global_numpy(task), global_tensors, CodecSpec.parse(uplink), rng)
    metrics = {"num-examples": int(crops.shape[0]), "train-loss": loss, "steps": steps}
    return out, metrics
