"""Inputs shared by every cell of a study or the demo: data, crop caches, foundation weights.

Each step is skipped when its output already exists (so a resumed study does not redo them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress

from fedprostate.data.prepare import prepare
from fedprostate.data.synth.federation import synthesize
from fedprostate.data.unlabeled import extract_unlabeled_crops
from fedprostate.models.backbones import family
from fedprostate.models.foundation import save_checkpoint
from fedprostate.models.pretrain import pretrain
from fedprostate.study.cells import StudyPaths
from fedprostate.study.config import StudyConfig


def synthesize_raw(raw: Path, cfg: StudyConfig, console: Console) -> None:
    if (raw / "truth" / "sites.csv").exists():
        console.print(f"[dim]synthetic federation {raw}: exists, kept[/dim]")
        return

    d = cfg.data
    t0 = time.time()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("synthesize studies", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = synthesize(raw, sites=d.sites, patients=d.patients, seed=d.seed,
                            preset=d.preset, unlabeled=d.unlabeled_studies, progress=advance)  # fmt: skip
    console.print(
        f"synthesized {report.n_studies} studies at {d.sites} sites + {d.unlabeled_studies} unlabeled in {time.time() - t0:.0f} s"
    )


def check_split(cache: Path, cfg: StudyConfig) -> None:
    """A crop cache split otherwise than ``data.split`` (when set) cannot serve the study."""
    meta = cache / "meta.json"
    if not cfg.data.split or not meta.exists():
        return
    have = json.loads(meta.read_text(encoding="utf-8")).get("fractions")
    if have is None or any(abs(a - b) > 1e-6 for a, b in zip(have, cfg.data.split, strict=True)):
        raise ValueError(
            f"{cache}: crop cache split {have} (train, val, test), but [data] split is "
            f"{list(cfg.data.split)}; prepare the cache with that split or use a new study folder"
        )


def prepare_cache(raw: Path, cache: Path, mode: str, cfg: StudyConfig, console: Console) -> None:
    if (cache / "index.csv").exists():
        console.print(f"[dim]{mode} crop cache {cache}: exists, kept[/dim]")
        return

    t0 = time.time()
    report = prepare(raw, cache, mode=mode, crop=cfg.data.crop, spacing=cfg.data.spacing,
                     seed=cfg.data.seed, fractions=cfg.data.fractions(), console=console)  # fmt: skip
    console.print(
        f"{mode} crops: {report.crops} from {report.kept} studies "
        f"({report.rejected} skipped, see {cache}/rejected.csv) in {time.time() - t0:.0f} s"
    )


def raw_source(cfg: StudyConfig, out: Path) -> Path:
    """Raw studies behind the data: the given cache's source folder, else the synth output."""
    if cfg.data.cache:
        meta = Path(cfg.data.cache) / "meta.json"
        if not meta.exists():
            raise FileNotFoundError(f"data.cache {cfg.data.cache}: no meta.json there")
        src = json.loads(meta.read_text(encoding="utf-8")).get("src", "")
        return Path(src) if src else Path(cfg.data.cache)
    return out / "data" / "raw"


def ensure_caches(
    cfg: StudyConfig, out: Path, paths: StudyPaths, needs_organ: bool, console: Console
) -> None:
    need_lesion = not (Path(paths.lesion_cache) / "index.csv").exists()
    need_organ = needs_organ and not (Path(paths.organ_cache) / "index.csv").exists()
    if cfg.data.cache and need_lesion:
        raise FileNotFoundError(f"data.cache {cfg.data.cache}: no index.csv there")
    for cache in filter(None, (paths.lesion_cache, paths.organ_cache)):
        check_split(Path(cache), cfg)  # caches kept from before (or given) must match the split
    raw = raw_source(cfg, out)
    need_unlabeled = (
        cfg.pretrain.enabled
        and not cfg.data.unlabeled
        and any(not Path(p).exists() for p in paths.foundations.values())
    )
    if (need_lesion or need_organ or need_unlabeled) and not cfg.data.cache:
        synthesize_raw(raw, cfg, console)
    if need_lesion:
        prepare_cache(raw, Path(paths.lesion_cache), "lesion", cfg, console)
    if need_organ:
        if not raw.exists():
            raise FileNotFoundError(f"{raw}: raw studies needed for the organ crop cache")
        prepare_cache(raw, Path(paths.organ_cache), "organ", cfg, console)


def pretrain_method(arch: str, preferred: str) -> str:
    return "simclr" if family(arch) == "resnet" else preferred


def ensure_foundations(cfg: StudyConfig, out: Path, paths: StudyPaths, console: Console) -> None:
    """Self-supervised pre-training of each needed backbone on the unlabeled pool (never labels)."""
    todo = {a: Path(p) for a, p in paths.foundations.items() if not Path(p).exists()}
    if not todo:
        return

    source = Path(cfg.data.unlabeled) if cfg.data.unlabeled else raw_source(cfg, out)
    p = cfg.pretrain
    crops = extract_unlabeled_crops(source, crop=cfg.data.crop, spacing=cfg.data.spacing,
                                    per_study=p.per_study, seed=cfg.data.seed)  # fmt: skip
    if len(crops) < 2:
        raise FileNotFoundError(f"{source}: no unlabeled studies to pre-train on")
    tensor = torch.from_numpy(crops)
    # One thread: on a shared 2-core machine, two OpenMP threads that get descheduled spin-wait
    # for each other (the demo's pre-training took > 10 min at load 14 with 2 threads, 4 s for a
    # comparable job with 1); on an idle machine 1 thread costs these small models little.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _pretrain_all(todo, tensor, cfg, source, console)
    finally:
        torch.set_num_threads(threads)


def _pretrain_all(todo: dict, tensor, cfg: StudyConfig, source: Path, console: Console) -> None:
    p, n_crops = cfg.pretrain, int(tensor.shape[0])
    for arch, path in todo.items():
        method = pretrain_method(arch, p.method)
        t0 = time.time()
        backbone, history = pretrain(arch, tensor, method=method, epochs=p.epochs,
                                     batch_size=p.batch_size, lr=p.lr, seed=cfg.data.seed)  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "arch": arch,
            "crop": cfg.data.crop,
            "normalization": "per-sequence, as in `data prepare` (extract_unlabeled_crops)",
            "pretrain": {"method": method, "epochs": p.epochs, "batch_size": p.batch_size,
                         "lr": p.lr, "seed": cfg.data.seed, "n_crops": n_crops,
                         "data": str(source)},
            "loss_history": history,
        }  # fmt: skip
        save_checkpoint(path, backbone, meta)
        console.print(
            f"pre-trained {arch} ({method}, {n_crops} unlabeled crops, {p.epochs} epochs): "
            f"loss {history[0]:.4f} → {history[-1]:.4f} in {time.time() - t0:.0f} s"
        )
