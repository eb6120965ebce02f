"""GPU measurement: swin_tiny self-supervised pre-training at 64 px (bf16) in a time budget, then
the linear-probe and kNN AUROC of the frozen result on reader findings vs random init.

Sized for ~4 minutes of one H200 in all: the unlabeled pool is synthesized on the machine's own
cores (``--synth-unlabeled`` studies, every core, disjoint patients) and cut at the probe cache's
crop size and spacing; the training epochs are chosen from a 10-step throughput calibration so
that pre-training fits ``--minutes``; the probe cache travels with the working tree (make it here
with ``--pack-cache``: reader findings only, ~38 MB). ``--tiny`` runs every step on the CPU with
tiny sizes (swin_test, a few unlabeled studies, seconds of training; without ``--cache`` a 3-site
federation is synthesized and prepared here) so the script can be trusted before a GPU is spent.

    python benchmarks/gpu_pretrain.py --pack-cache /work/data/default-l64 --out runs/gpu/probe-l64
    python benchmarks/gpu_pretrain.py --cache runs/gpu/probe-l64 --out runs/gpu_pretrain --device cuda
    python benchmarks/gpu_pretrain.py --tiny --device cpu --out runs/gpu_tiny
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedprostate.data.cache import (
    load_index,
    load_meta,
    load_patients,
    load_site_crops,
    write_cache,
)
from fedprostate.data.synth.federation import synthesize
from fedprostate.data.unlabeled import extract_pool
from fedprostate.engine.probe import evaluate_foundation
from fedprostate.models.foundation import save_checkpoint, update_checkpoint_meta
from fedprostate.models.pretrain import Pretrainer, PretrainSettings, batches


def pack_cache(src: Path, out: Path, max_train: int, seed: int = 0) -> Path:
    """A copy of ``src`` with its reader/proposal findings only, at most ``max_train`` train
    findings (whole patients, seeded), small enough to travel to the GPU machine."""
    rows = [r for r in load_index(src) if r["source"] != "sampled"]
    rng = np.random.default_rng(seed)
    train_patients = sorted({(r["site"], r["patient_id"]) for r in rows if r["split"] == "train"})
    rng.shuffle(train_patients)
    keep, n = set(), 0
    for p in train_patients:
        k = sum(1 for r in rows if r["split"] == "train" and (r["site"], r["patient_id"]) == p)
        if n + k > max_train:
            continue
        keep.add(p)
        n += k
    rows = [r for r in rows if r["split"] != "train" or (r["site"], r["patient_id"]) in keep]
    crops, new_rows = {}, []
    for site in sorted({r["site"] for r in rows}):
        source = load_site_crops(src, site)
        mine = [r for r in rows if r["site"] == site]
        crops[site] = source[[int(r["row"]) for r in mine]]
        new_rows += [{**r, "row": i} for i, r in enumerate(mine)]
    kept = {(r["site"], r["patient_id"]) for r in new_rows}
    patients = [p for p in load_patients(src) if (p["site"], p["patient_id"]) in kept]
    meta = {**load_meta(src), "packed_from": str(src), "packed_max_train": max_train}
    write_cache(out, meta, new_rows, crops, patients)
    return out


def smoke_data(work: Path) -> tuple[Path, Path]:
    """A 3-site federation (prepared at 64 px, 0.5 mm) and its unlabeled studies, on the CPU."""
    from fedprostate.data.prepare import prepare

    raw = work / "raw"
    if not (raw / "unlabeled").is_dir():
        synthesize(raw, sites=3, patients=45, preset="small", unlabeled=12, workers=1)
    cache = work / "cache"
    if not (cache / "index.csv").is_file():
        prepare(raw, cache, crop=64, spacing=0.5)
    return raw, cache


def throughput(arch: str, crop: int, settings: PretrainSettings, crops: torch.Tensor) -> float:
    """Crops per second of the objective on this device (3 warm-up + 10 timed steps)."""
    probe = Pretrainer(arch, crop, settings)
    task, device = probe.task, probe.device
    steps = batches(len(crops), settings.batch_size)[:13] or [(0, len(crops))]
    timed = 0
    for k, (lo, hi) in enumerate(steps * (13 // len(steps) + 1)):
        if k == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        if k == 13:
            break
        x = crops[lo:hi].to(device).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.autocast):
            loss = task.loss(x, probe.generator)
        probe.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        probe.optimizer.step()
        timed += (hi - lo) if k >= 3 else 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    return timed / max(time.perf_counter() - t0, 1e-9)


class OutOfTimeError(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="Probe cache (64 px); see --pack-cache.")
    ap.add_argument(
        "--pack-cache", type=Path, help="Write a reader-only copy of this cache to --out."
    )
    ap.add_argument("--max-train", type=int, default=800, help="--pack-cache: train findings kept.")
    ap.add_argument("--synth-unlabeled", type=int, default=2000)
    ap.add_argument("--per-study", type=int, default=8)
    ap.add_argument("--arch", default="swin_tiny")
    ap.add_argument("--method", default="dino")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=2.5, help="Pre-training budget.")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--tiny", action="store_true", help="Tiny sizes on the CPU (a check).")
    args = ap.parse_args()
    con = Console()
    if args.pack_cache:
        out = pack_cache(args.pack_cache, args.out, args.max_train)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
        con.print(f"{out}: {len(load_index(out))} findings, {size:.1f} MB")
        return
    t_all = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    workers = os.cpu_count() or 1
    if args.tiny:
        args.device, args.arch, args.minutes, args.batch_size = "cpu", "swin_test", 0.02, 16
        args.synth_unlabeled, args.per_study, args.n_boot = 4, 4, min(args.n_boot, 50)
    if args.cache is None and not args.tiny:
        ap.error("give --cache (a probe cache made with --pack-cache) or --tiny")
    if args.cache is not None and not (args.cache / "index.csv").is_file():
        ap.error(f"{args.cache} is not a crop cache (no index.csv)")
    if args.cache is None:
        raw, cache = smoke_data(args.out / "data")
    else:
        cache, raw = args.cache, args.out / "raw"
        if not (raw / "unlabeled").is_dir():
            synthesize(raw, sites=1, patients=2, preset="small", unlabeled=args.synth_unlabeled,
                       workers=workers)  # fmt: skip
    t_data = time.time()
    meta = load_meta(cache)
    crop, spacing = int(meta["crop"]), float(meta.get("spacing", 0.5))
    pool = extract_pool(raw, crop, spacing, args.per_study, 0, workers=workers)
    crops = torch.from_numpy(pool.crops)
    t_pool = time.time()
    settings = PretrainSettings(args.method, 1, args.batch_size, args.lr, device=args.device,
                                bf16=True)  # fmt: skip
    rate = throughput(args.arch, crop, settings, crops)
    epochs = max(1, int(args.minutes * 60 * rate / len(crops)))
    settings = PretrainSettings(args.method, epochs, args.batch_size, args.lr, device=args.device,
                                bf16=True)  # fmt: skip
    trainer = Pretrainer(args.arch, crop, settings)
    t0 = time.time()

    def budget(tr):
        if time.time() - t0 > args.minutes * 60 * 1.2 and tr.epoch < epochs:
            raise OutOfTimeError

    try:
        trainer.fit(crops, progress=False, on_epoch=budget)
    except OutOfTimeError:
        con.print(f"stopped after {trainer.epoch} of {epochs} epochs (time budget)")
    seconds = time.time() - t0
    ckpt = args.out / f"{args.arch}_{args.method}.safetensors"
    save_checkpoint(ckpt, trainer.encoder(), {
        "arch": args.arch, "crop": crop, "spacing": spacing, "normalization": pool.meta["normalization"],
        "pretrain": {"method": args.method, "epochs": trainer.epoch, "n_crops": len(crops),
                     "n_studies": len(pool.studies), "batch_size": args.batch_size, "lr": args.lr,
                     "device": args.device, "bf16": True, "seconds": round(seconds, 1),
                     "img_per_s": round(float(np.mean(trainer.throughput)), 1)},
        "loss_history": trainer.history})  # fmt: skip
    probe = evaluate_foundation(ckpt, cache, device=args.device, n_boot=args.n_boot)
    update_checkpoint_meta(ckpt, foundation_eval=probe)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    result = {
        "device": gpu, "arch": args.arch, "method": args.method, "crop": crop,
        "studies": len(pool.studies), "crops": len(crops), "epochs": trainer.epoch,
        "calibrated_img_per_s": round(rate, 1),
        "img_per_s": round(float(np.mean(trainer.throughput)), 1),
        "pretrain_min": round(seconds / 60, 2), "data_min": round((t_pool - t_all) / 60, 2),
        "synth_min": round((t_data - t_all) / 60, 2), "total_min": round((time.time() - t_all) / 60, 2),
        "loss_first": trainer.history[0], "loss_last": trainer.history[-1],
        "probe": {k: probe[k] for k in ("linear", "knn", "n_findings")},
    }  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = Table(title=f"{args.method} pre-training of {args.arch} @ {crop} px on {gpu} (bf16)")
    for col in ("what", "value"):
        table.add_column(col)
    for key in ("studies", "crops", "epochs", "img_per_s", "pretrain_min", "data_min", "total_min",
                "loss_first", "loss_last"):  # fmt: skip
        table.add_row(
            key, f"{result[key]:.4g}" if isinstance(result[key], float) else str(result[key])
        )
    for name in ("linear", "knn"):
        p, r, d = probe[name]["pretrained"], probe[name]["random"], probe[name]["delta"]
        table.add_row(
            f"{name} probe test AUROC",
            f"{p['test_auroc']:.3f} [{p['test_low']:.3f}, {p['test_high']:.3f}] vs random "
            f"{r['test_auroc']:.3f}; Δ {d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]",
        )
    con.print(table)


if __name__ == "__main__":
    main()
