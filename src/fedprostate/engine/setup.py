"""Plain functions the Flower apps and the baselines share: build the model, find a client's data.

Nothing here imports Flower. Built models and loaded indexes are cached per process, because a
simulated SuperNode process serves many rounds (and, in simulation, many sites).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fedprostate.config import RunConfig
from fedprostate.data.cache import CropDataset, load_index, load_meta
from fedprostate.data.crops import channel_names
from fedprostate.data.splits import partition
from fedprostate.models.backbones import create_backbone
from fedprostate.models.bundle import load_teacher
from fedprostate.models.finetune import (
    Finetuned,
    build_finetune,
    get_communicated,
    set_communicated,
)
from fedprostate.models.foundation import backbone_sha256, init_from_foundation
from fedprostate.records.run_folder import RunRecorder
from fedprostate.records.tracking import check_available, open_tracking


@dataclass
class ModelBundle:
    ft: Finetuned
    foundation_sha256: str  # hash of the backbone weights every participant must share
    initial_local: dict[str, torch.Tensor]  # starting values of trained-but-local tensors
    # Starting values of the communicated tensors, copied at build time: ``ft`` is cached per
    # process and later loaded with other weights, so a run must never start from ``ft`` itself.
    initial_communicated: dict[str, np.ndarray]


def input_channels(cfg: RunConfig) -> int:
    """Channels of the model input: ``model.in_chans``, else the crop cache's (3 per slice)."""
    if cfg.model.in_chans > 0:
        return cfg.model.in_chans
    meta = Path(cfg.data.cache) / "meta.json" if cfg.data.cache else None
    if meta is not None and meta.is_file():
        info = load_meta(cfg.data.cache)
        return len(info.get("channel_names") or channel_names(int(info.get("n_slices", 1))))
    return 3


def _model_key(cfg: RunConfig) -> str:
    foundation = Path(cfg.model.foundation)
    stamp = foundation.stat().st_mtime_ns if cfg.model.foundation and foundation.exists() else 0
    return repr((cfg.seed, cfg.model, cfg.finetune, stamp, input_channels(cfg)))


_MODELS: dict[str, ModelBundle] = {}


def build_model(cfg: RunConfig, fresh: bool = False) -> ModelBundle:
    """Backbone (+ foundation weights) + fine-tuning method, cached per process unless ``fresh``."""
    key = _model_key(cfg)
    if not fresh and key in _MODELS:
        return _MODELS[key]
    torch.manual_seed(cfg.seed)  # identical random init on every participant when no foundation
    chans = input_channels(cfg)
    backbone = create_backbone(cfg.model.arch, crop=cfg.model.crop, num_classes=2, in_chans=chans)
    if cfg.model.foundation:
        init_from_foundation(backbone, cfg.model.foundation, cfg.model.arch, cfg.model.crop, chans)
    sha = backbone_sha256(backbone)
    if cfg.model.foundation_sha256 and sha != cfg.model.foundation_sha256:
        raise ValueError(
            f"foundation backbone hash {sha[:12]}… differs from the consortium's expected "
            f"{cfg.model.foundation_sha256[:12]}…: LoRA/adapter updates are meaningless on another "
            "backbone; install the consortium's foundation checkpoint"
        )
    ft = build_finetune(backbone, cfg.model.arch, cfg.finetune, seed=cfg.seed)
    state = ft.model.state_dict()
    bundle = ModelBundle(
        ft=ft,
        foundation_sha256=sha,
        initial_local={n: state[n].detach().clone() for n in ft.local},
        initial_communicated=communicated_numpy(ft),
    )
    if not fresh:
        _MODELS[key] = bundle
    return bundle


_TEACHERS: dict[str, torch.nn.Module] = {}


def teacher_model(cfg: RunConfig) -> torch.nn.Module | None:
    """The frozen teacher for knowledge distillation (``distill.teacher``), loaded once."""
    if not cfg.distill.teacher:
        return None
    if cfg.distill.teacher not in _TEACHERS:
        _TEACHERS[cfg.distill.teacher] = load_teacher(cfg.distill.teacher)
    return _TEACHERS[cfg.distill.teacher]


def communicated_numpy(ft: Finetuned) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().numpy().astype(np.float32, copy=True)
        for k, v in get_communicated(ft).items()
    }


def load_communicated(ft: Finetuned, arrays: dict[str, np.ndarray]) -> None:
    set_communicated(
        ft, {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()}
    )


def communicated_shapes(ft: Finetuned) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in get_communicated(ft).items()}


def local_state(ft: Finetuned) -> dict[str, torch.Tensor]:
    state = ft.model.state_dict()
    return {n: state[n].detach().clone() for n in ft.local}


def set_local_state(ft: Finetuned, tensors: dict[str, torch.Tensor]) -> None:
    if tensors:
        ft.model.load_state_dict(tensors, strict=False)


# ---- run folder -------------------------------------------------------------------------------


class RunInputError(ValueError):
    """A run that cannot start (missing crop cache or foundation, unusable validation split)."""


def crop_mismatch(cfg: RunConfig, cache: Path) -> str:
    """One line when the cache's crops are not the size the model is built for ("" if they are):
    without it every training step of every site fails inside the backbone."""
    if not (cache / "meta.json").is_file():
        return ""
    crop = load_meta(cache).get("crop")
    if crop is None or int(crop) == cfg.model.crop:
        return ""
    return (
        f"{cache} holds {int(crop)} px crops but model.crop = {cfg.model.crop}: "
        f"set model.crop={int(crop)} (--set model.crop={int(crop)}) or prepare the cache at "
        f"{cfg.model.crop} px"
    )


def check_run_data(cfg: RunConfig) -> None:
    """Refuse, before any process starts, a run whose inputs cannot give a meaningful result.

    The crop cache and the foundation checkpoint must exist, and the pooled validation split
    must hold both classes: with one class its AUROC is undefined and the best round would be
    picked silently (the first one).
    """
    if not cfg.data.cache:
        raise RunInputError(
            "data.cache is not set: give --data CACHE (a folder written by `fedprostate data "
            "prepare`)"
        )
    cache = Path(cfg.data.cache)
    if not (cache / "index.csv").is_file():
        raise RunInputError(
            f"{cache}: not a crop cache (no index.csv); write one with `fedprostate data prepare`"
        )
    if cfg.model.foundation and not Path(cfg.model.foundation).is_file():
        raise RunInputError(f"model.foundation = {cfg.model.foundation}: no such checkpoint")
    mismatch = crop_mismatch(cfg, cache)
    if mismatch:
        raise RunInputError(mismatch)
    labels = [int(r["label"]) for r in _index(str(cache.resolve())) if r["split"] == "val"]
    if len(set(labels)) < 2:
        what = "no findings" if not labels else f"only label {labels[0]} ({len(labels)} findings)"
        raise RunInputError(
            f"the validation split of {cache} has {what}: AUROC is undefined on it, so no best "
            "round can be chosen; prepare the cache from more studies or with another --seed"
        )


def prepare_run_config(cfg: RunConfig, out: str | Path, resume: bool = False) -> RunConfig:
    """Absolute paths (Flower's processes run elsewhere) and one torch thread per client CPU."""
    changes: dict = {"out": str(Path(out).resolve()), "resume": resume}
    if cfg.data.cache:
        changes["data.cache"] = str(Path(cfg.data.cache).resolve())
    if cfg.model.foundation:
        changes["model.foundation"] = str(Path(cfg.model.foundation).resolve())
    if cfg.train.threads == 0:
        changes["train.threads"] = max(1, int(cfg.fl.client_cpus))
    return cfg.replace(**changes)


def federation_patients(cfg: RunConfig) -> int:
    """Training patients of the whole federation (each site's training split as it trains)."""
    return len(
        {
            (r["site"], r["patient_id"])
            for name in client_names(cfg)
            for r in client_dataset(cfg, name, "train").rows
        }
    )


def resolve_privacy(cfg: RunConfig) -> RunConfig:
    """``privacy.delta = 0`` means 1 / (training patients of the federation): fixed here, once,
    so every site and the record use the same value."""
    if not cfg.privacy.enabled or cfg.privacy.delta > 0:
        return cfg
    return cfg.replace(**{"privacy.delta": 1.0 / max(1, federation_patients(cfg))})


def check_tracking(cfg: RunConfig) -> None:
    """The tracking libraries the configuration asks for are installed (TrackingError if not)."""
    check_available(cfg.track.tensorboard, cfg.track.use_mlflow)


def start_tracking(recorder: RunRecorder, cfg: RunConfig, resume_after: int | None = None) -> None:
    """Attach the configured trackers to ``recorder`` (a resumed run goes on in the same ones)."""
    recorder.tracking = open_tracking(
        recorder.dir,
        tensorboard=cfg.track.tensorboard,
        mlflow=cfg.track.use_mlflow,
        mlflow_uri=cfg.track.mlflow_uri,
        experiment=cfg.track.experiment,
        resume_after=resume_after,
    )


def summary_head(cfg: RunConfig, kind: str, bundle: ModelBundle | None, wall_s: float) -> dict:
    """The fields every run kind's summary.json starts with (``records.run_folder`` schema)."""
    head = {
        "kind": kind,
        "status": "finished",
        "rounds": cfg.fl.rounds,
        "method": cfg.finetune.method,
        "arch": cfg.model.arch,
        "wall_s": round(wall_s, 2),
    }
    if bundle is not None:
        head["trainable_params"] = int(
            sum(p.numel() for p in bundle.ft.model.parameters() if p.requires_grad)
        )
        head["communicated_params"] = int(
            sum(np.prod(s) for s in communicated_shapes(bundle.ft).values())
        )
        head["foundation_sha256"] = bundle.foundation_sha256
    return head


# ---- data ---------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _index(cache: str) -> tuple[dict, ...]:
    return tuple(load_index(cache))


def client_partitions(cfg: RunConfig) -> dict[str, list[dict]]:
    """Client name → its index rows (all splits), per the configured partition scheme."""
    if not cfg.data.cache:
        raise ValueError("data.cache is not set: point it at a folder written by `data prepare`")
    rows = [dict(r) for r in _index(str(Path(cfg.data.cache).resolve()))]
    parts = partition(
        rows,
        scheme=cfg.data.partition,
        num_partitions=cfg.data.num_partitions or None,
        alpha=cfg.data.dirichlet_alpha,
        seed=cfg.seed,
        holdout_site=cfg.data.holdout_site or None,
    )
    return dict(sorted(parts.items()))


def client_names(cfg: RunConfig) -> list[str]:
    return list(client_partitions(cfg))


def _cap(rows: list[dict], cap: int, seed: int, name: str) -> list[dict]:
    if cap <= 0 or len(rows) <= cap:
        return rows
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    keep = np.sort(rng.choice(len(rows), size=cap, replace=False))
    return [rows[i] for i in keep]


def client_dataset(cfg: RunConfig, client: str, split: str) -> CropDataset:
    parts = client_partitions(cfg)
    if client not in parts:
        raise KeyError(
            f"no client {client!r} in partition {cfg.data.partition} (clients: {', '.join(parts)})"
        )
    rows = [r for r in parts[client] if r["split"] == split]
    if split == "train":
        rows = _cap(rows, cfg.data.max_train_per_client, cfg.seed, client)
    return CropDataset(cfg.data.cache, rows)


def pooled_dataset(cfg: RunConfig, split: str, sites: list[str] | None = None) -> CropDataset:
    """All rows of ``split`` (optionally only some sites): the benchmark's held-out set.

    Leave-one-site-out scores the held-out hospital, which never trained, on its test split.
    """
    rows = [dict(r) for r in _index(str(Path(cfg.data.cache).resolve()))]
    if cfg.data.partition == "loso" and split == "test" and sites is None:
        sites = [cfg.data.holdout_site]
    rows = [r for r in rows if r["split"] == split and (sites is None or r["site"] in sites)]
    return CropDataset(cfg.data.cache, rows)


def client_seed(cfg: RunConfig, server_round: int, client: str) -> int:
    digest = hashlib.sha256(f"{cfg.seed}:{server_round}:{client}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
