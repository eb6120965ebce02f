"""Is the foundation worth fine-tuning? Pre-train, then probe frozen features on reader findings.

For each method, pre-trains ``--arch`` on the unlabeled pool (a file from ``fedprostate data
pool``; its crops must have the cache's size and spacing), then runs ``fedprostate foundation
eval``'s probes: logistic regression and weighted kNN on frozen pooled features of the reader
findings (fit on train, setting chosen on validation, test AUROC with patient-bootstrap CI),
against the same architecture with random weights (paired patient bootstrap of the difference).
Prints one table (probe AUROCs, Δ, CPU cost) and writes ``OUT/results.json``; checkpoints
(``OUT/<method>.safetensors``, resumable) are reused when they exist.

    python benchmarks/foundation_probe.py --pool runs/pool-l32.safetensors --cache runs/default-l32 --arch swin_test --methods dino,simclr,simmim --epochs 10 --out runs/foundation_probe
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fedprostate.data.cache import load_meta
from fedprostate.data.unlabeled import load_pool
from fedprostate.engine.probe import evaluate_foundation
from fedprostate.models.foundation import checkpoint_meta, save_checkpoint, update_checkpoint_meta
from fedprostate.models.pretrain import Pretrainer, PretrainSettings


def pretrain_one(pool, arch, method, args, out: Path) -> dict:
    """Pre-train (resuming a saved state) and save ``out``; returns the checkpoint metadata."""
    if out.exists() and checkpoint_meta(out):
        return checkpoint_meta(out)
    crop = int(pool.crops.shape[-1])
    settings = PretrainSettings(method, args.epochs, args.batch_size, args.lr, seed=args.seed,
                                device=args.device)  # fmt: skip
    trainer = Pretrainer(arch, crop, settings)
    state_path = out.with_suffix(".state.pt")
    if state_path.exists():
        trainer.load_state_dict(torch.load(state_path, weights_only=True), str(state_path))

    def save(tr):
        torch.save(tr.state_dict(), state_path)

    crops = torch.from_numpy(pool.crops)
    if args.max_crops and len(crops) > args.max_crops:
        crops = crops[torch.randperm(len(crops), generator=torch.Generator().manual_seed(0))][
            : args.max_crops
        ]
    t0 = time.time()
    history = trainer.fit(crops, progress=not args.quiet, on_epoch=save)
    meta = {
        "arch": arch,
        "crop": crop,
        "spacing": pool.meta.get("spacing"),
        "normalization": pool.meta.get("normalization", "as stored"),
        "pretrain": {"method": method, "epochs": args.epochs, "batch_size": args.batch_size,
                     "lr": args.lr, "n_crops": len(crops), "n_studies": len(pool.studies),
                     "seconds": round(time.time() - t0, 1), "device": args.device,
                     "img_per_s": round(sum(trainer.throughput) / len(trainer.throughput), 1)},
        "loss_history": history,
    }  # fmt: skip
    save_checkpoint(out, trainer.encoder(), meta)
    return checkpoint_meta(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=Path, required=True, help="Pool file from `data pool`.")
    ap.add_argument("--cache", type=Path, required=True, help="Crop cache (reader findings).")
    ap.add_argument("--arch", default="swin_test")
    ap.add_argument("--methods", default="dino,simclr,simmim")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-crops", type=int, default=0, help="Use at most this many (0 = all).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU).")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    pool = load_pool(args.pool)
    cache_crop = int(load_meta(args.cache)["crop"])
    if pool.crops.shape[-1] != cache_crop:
        ap.error(f"{args.pool} holds {pool.crops.shape[-1]} px crops, {args.cache} {cache_crop} px")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for method in args.methods.split(","):
        ckpt = args.out / f"{method}.safetensors"
        meta = pretrain_one(pool, args.arch, method, args, ckpt)
        probe = meta.get("foundation_eval")
        if probe is None or probe.get("cache") != str(args.cache.resolve()):
            probe = evaluate_foundation(ckpt, args.cache, seed=args.seed, n_boot=args.n_boot,
                                        device=args.device)  # fmt: skip
            update_checkpoint_meta(ckpt, foundation_eval=probe)
        results[method] = {"pretrain": meta["pretrain"], "probe": probe}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    show(results, args)


def _ci(r: dict) -> str:
    return f"{r['test_auroc']:.3f} [{r['test_low']:.3f}, {r['test_high']:.3f}]"


def show(results: dict, args) -> None:
    any_probe = next(iter(results.values()))["probe"]
    n = any_probe["n_findings"]
    table = Table(
        title=f"frozen {args.arch} @ {any_probe['crop']} px, probes on reader findings "
        f"(train {n['train']} / val {n['val']} / test {n['test']}); pool {args.pool.name}"
    )
    for col in ("method", "crops × epochs", "img/s", "min", "probe", "pre-trained test AUROC",
                "random init", "Δ [95% CI], p"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("method", "probe") else "right")
    for method, r in results.items():
        p = r["pretrain"]
        for probe in ("linear", "knn"):
            d = r["probe"][probe]["delta"]
            table.add_row(
                method if probe == "linear" else "",
                f"{p['n_crops']} × {p['epochs']}" if probe == "linear" else "",
                f"{p['img_per_s']:.0f}" if probe == "linear" else "",
                f"{p['seconds'] / 60:.1f}" if probe == "linear" else "",
                probe,
                _ci(r["probe"][probe]["pretrained"]),
                _ci(r["probe"][probe]["random"]),
                f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], p={d['p_value']:.3f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
