"""Federated vs central self-supervised pre-training on the same unlabeled studies.

Central: one process pre-trains on the whole pool for ``rounds × local epochs`` epochs.
Federated: ``fedprostate pretrain --federated``: the pool split by study across ``--sites`` sites,
``--rounds`` Flower rounds of ``--local-epochs`` local epochs each (so every crop is seen as
often as centrally), aggregated with ``--strategy`` through the ``--uplink`` codec. Both
checkpoints are probed on the reader findings of ``--cache`` (as ``fedprostate foundation eval``)
and compared with a paired patient bootstrap; the goal is |federated − central| ≤ 0.02 linear-probe
AUROC. Writes ``OUT/results.json`` and prints a table.

    python benchmarks/federated_pretrain.py --pool runs/pool-l32.safetensors --cache runs/default-l32 --arch swin_test --method dino --sites 4 --rounds 6 --out runs/federated_pretrain
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fedprostate.data.unlabeled import load_pool  # noqa: E402
from fedprostate.engine.probe import compare_checkpoints, evaluate_foundation  # noqa: E402
from fedprostate.models.foundation import checkpoint_meta, update_checkpoint_meta  # noqa: E402
from fedprostate.runs.federated_pretrain import federate_pretrain, pretrain_config  # noqa: E402
from foundation_probe import pretrain_one  # noqa: E402  (a sibling benchmark)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--arch", default="swin_test")
    ap.add_argument("--method", default="dino")
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--strategy", default="fedavg")
    ap.add_argument("--uplink", default="fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    pool = load_pool(args.pool)
    central = args.out / "central.safetensors"
    args.epochs, args.max_crops, args.device, args.quiet = (
        args.rounds * args.local_epochs, 0, "cpu", True,
    )  # fmt: skip
    pretrain_one(pool, args.arch, args.method, args, central)
    federated = args.out / "federated.safetensors"
    if not federated.exists():
        cfg = pretrain_config(
            args.pool, args.arch, None, args.method, args.local_epochs, args.batch_size, args.lr,
            args.seed, args.sites, args.rounds,
            overrides=[f"fl.strategy={args.strategy}", f'compress.uplink="{args.uplink}"'],
        )  # fmt: skip
        federate_pretrain(
            cfg, federated, resume=(federated.with_suffix(".fl") / "checkpoints").is_dir()
        )
    results = {}
    for name, ckpt in (("central", central), ("federated", federated)):
        meta = checkpoint_meta(ckpt)
        probe = meta.get("foundation_eval") or evaluate_foundation(ckpt, args.cache, seed=args.seed,
                                                                   n_boot=args.n_boot)  # fmt: skip
        update_checkpoint_meta(ckpt, foundation_eval=probe)
        results[name] = {"pretrain": meta["pretrain"], "probe": probe}
    results["federated_minus_central"] = compare_checkpoints(central, federated, args.cache,
                                                             n_boot=args.n_boot, seed=args.seed)  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    show(results, args)


def show(results: dict, args) -> None:
    table = Table(
        title=f"{args.method} pre-training of {args.arch}: central vs federated ({args.sites} sites, "
        f"{args.rounds} rounds × {args.local_epochs} local epoch, {args.strategy}, {args.uplink} "
        f"uplink), same {args.pool.name}"
    )
    for col in ("arm", "minutes", "MB total", "probe", "test AUROC [95% CI]", "Δ vs random init"):
        table.add_column(col, justify="left" if col in ("arm", "probe") else "right")
    for arm in ("central", "federated"):
        r = results[arm]
        for probe in ("linear", "knn"):
            p, d = r["probe"][probe]["pretrained"], r["probe"][probe]["delta"]
            table.add_row(
                arm if probe == "linear" else "",
                f"{r['pretrain']['seconds'] / 60:.1f}" if probe == "linear" else "",
                f"{r['pretrain'].get('total_mb', 0):.0f}" if probe == "linear" else "",
                probe,
                f"{p['test_auroc']:.3f} [{p['test_low']:.3f}, {p['test_high']:.3f}]",
                f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]",
            )
    Console().print(table)
    for probe, d in results["federated_minus_central"].items():
        verdict = "within 0.02" if abs(d["delta"]) <= 0.02 else "NOT within 0.02"
        Console().print(
            f"{probe} probe, federated − central: {d['delta']:+.3f} [{d['low']:+.3f}, "
            f"{d['high']:+.3f}], p={d['p_value']:.2f} ({verdict})"
        )


if __name__ == "__main__":
    main()
