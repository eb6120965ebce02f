"""Federated self-supervised pre-training (``fedprostate pretrain --federated``): the run folder,
the Flower simulation, and the foundation checkpoint it ends with.

``OUT.safetensors`` gets the encoder (DINO: the teacher) in the same format as central
pre-training, with ``OUT.json`` (metadata, per-round mean loss, bytes; the command draws
``OUT.loss.png`` from it);
the run folder ``OUT.fl/`` holds ``config.toml``, ``metrics.jsonl``, the round checkpoints and
``summary.json``. A study folder given as the pool is first extracted into ``OUT.fl/pool.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedprostate.config import ConfigError, RunConfig
from fedprostate.data.unlabeled import NORMALIZATION, extract_pool, load_pool, save_pool
from fedprostate.fl.pretrain_site import build_task, load_global, site_crops, site_names
from fedprostate.fl.simulation import simulate
from fedprostate.models.foundation import save_checkpoint
from fedprostate.runs.federated import RunFailedError


def run_folder(out: str | Path) -> Path:
    return Path(out).with_suffix(".fl")


def pretrain_config(
    data: Path,
    arch: str,
    crop: int | None,
    method: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    sites: int,
    rounds: int,
    device: str = "cpu",
    overrides: list[str] | None = None,
) -> RunConfig:
    """The run configuration of a federated pre-training: command-line values, then ``--set``."""
    given = {
        "model.arch": arch, "pretrain.method": method, "train.epochs": epochs,
        "train.batch_size": batch_size, "train.lr": lr, "seed": seed, "pretrain.sites": sites,
        "fl.rounds": rounds, "train.device": device, "pretrain.pool": str(Path(data)),
        "fl.min_train_nodes": sites, "fl.min_available_nodes": sites, "fl.strategy": "fedavg",
    }  # fmt: skip
    if crop is not None:
        given["model.crop"] = crop
    cfg = RunConfig.from_flat(given)
    return RunConfig.load(None, [f"{k}={json.dumps(v)}" for k, v in cfg.to_flat().items()
                                 if k in given] + list(overrides or []))  # fmt: skip


def _pool_file(cfg: RunConfig, run_dir: Path) -> tuple[RunConfig, dict]:
    src = Path(cfg.pretrain.pool)
    if src.is_dir():
        pool = extract_pool(src, cfg.model.crop, 0.5, 16, cfg.seed)
        src = save_pool(run_dir / "pool.safetensors", pool)
    pool = load_pool(src)
    crop = int(pool.crops.shape[-1])
    changes = {"pretrain.pool": str(src.resolve()), "model.crop": crop}
    return cfg.replace(**changes), pool.meta


def federate_pretrain(cfg: RunConfig, out: str | Path, resume: bool = False) -> dict:
    """Run the simulation; write the foundation checkpoint at ``out``; return a summary."""
    out = Path(out)
    if cfg.pretrain.sites < cfg.fl.min_sites:
        raise ConfigError(
            f"fl.min_sites = {cfg.fl.min_sites}: federated pre-training over {cfg.pretrain.sites} "
            "sites would never aggregate (no aggregate from fewer sites); use more --sites or "
            "lower fl.min_sites"
        )
    run_dir = run_folder(out).resolve()
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise ValueError(
            f"{run_dir}: a federated pre-training run is there: --resume continues it; remove "
            "it to start over"
        )
    if resume and not (run_dir / "checkpoints").is_dir():
        raise ValueError(f"--resume: no federated pre-training run in {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg, pool_meta = _pool_file(cfg, run_dir)
    cfg = cfg.replace(**{"out": str(run_dir), "resume": resume})
    if resume:
        _check_same_run(run_dir, cfg)
    for site in site_names(cfg):  # every site must hold crops before any process starts
        site_crops(cfg, site)
    simulate(cfg, cfg.pretrain.sites, pretrain=True)
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise RunFailedError(f"federated pre-training ended without writing {summary_path}")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("status") == "failed":
        raise RunFailedError(f"federated pre-training failed: {summary.get('reason')}")
    return write_foundation(cfg, out, summary, pool_meta)


def _check_same_run(run_dir: Path, cfg: RunConfig) -> None:
    saved = RunConfig.load(run_dir / "config.toml", saved=True)
    for key in ("pretrain.method", "model.arch", "model.crop", "pretrain.sites", "pretrain.pool"):
        theirs, mine = saved.to_flat()[key], cfg.to_flat()[key]
        if theirs != mine:
            raise ValueError(
                f"{run_dir}: cannot resume: it was pre-trained with {key} {theirs!r}, this run "
                f"asks for {mine!r}"
            )


def write_foundation(cfg: RunConfig, out: Path, summary: dict, pool_meta: dict) -> dict:
    from safetensors.numpy import load_file

    task = build_task(cfg)
    final = load_file(str(Path(cfg.out) / "model.safetensors"))
    load_global(task, {k: np.asarray(v) for k, v in final.items()})
    history = [float(x) for x in summary["loss_history"] if x is not None]
    meta = {
        "arch": cfg.model.arch,
        "crop": cfg.model.crop,
        "spacing": pool_meta.get("spacing"),
        "normalization": pool_meta.get("normalization", NORMALIZATION),
        "pretrain": {
            "method": cfg.pretrain.method,
            "federated": True,
            "sites": cfg.pretrain.sites,
            "rounds": cfg.fl.rounds,
            "strategy": cfg.fl.strategy,
            "local_epochs": cfg.train.epochs,
            "local_steps": cfg.train.steps if not cfg.train.epochs else 0,
            "batch_size": cfg.train.batch_size,
            "lr": cfg.train.lr,
            "seed": cfg.seed,
            "uplink_codec": cfg.compress.uplink,
            "pool": cfg.pretrain.pool,
            "uplink_mb_per_client_round": summary["uplink_mb_per_client_round"],
            "total_mb": summary["total_mb"],
            "seconds": summary["wall_s"],
            "run": str(cfg.out),
        },  # fmt: skip
        "round_history": history,
    }
    written = save_checkpoint(out, task.encoder(), meta)
    return {"checkpoint": str(out), "sha256": written["sha256"],
            "loss_first": history[0] if history else float("nan"),
            "loss_last": history[-1] if history else float("nan"), "rounds": cfg.fl.rounds,
            "seconds": summary["wall_s"], "total_mb": summary["total_mb"],
            "uplink_mb_per_client_round": summary["uplink_mb_per_client_round"]}  # fmt: skip
