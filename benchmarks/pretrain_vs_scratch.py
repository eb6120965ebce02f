"""Does self-supervised pre-training help? Pre-trained vs scratch initialisation, LoRA and full FT.

Uses what ``fedprostate demo --out DEMO`` leaves behind (the lesion crop cache of its synthetic
federation and the SimMIM foundation pre-trained on its unlabeled pool, which shares no patient with
any site) and runs four federated fine-tunings with the demo's configuration (FedAdam, fp32):
{LoRA, full} × {foundation, random init}. Reports the best validation AUROC, the test AUROC at that
round with a patient-bootstrap 95% CI, the first round whose validation AUROC reaches ``--target``
(convergence), and the paired patient bootstrap of pre-trained − scratch on the test findings.

    python benchmarks/pretrain_vs_scratch.py --demo runs/demo --out runs/pretrain_vs_scratch [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedprostate.demo import load_demo_config
from fedprostate.eval.compare import compare_models
from fedprostate.eval.metrics import auroc_ci
from fedprostate.records import predictions
from fedprostate.runs.federated import federate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, required=True, help="Output folder of `fedprostate demo`.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--target", type=float, default=0.70)
    args = ap.parse_args()
    _, base = load_demo_config(None)
    arch = base.model.arch
    foundation = args.demo / "foundation" / f"{arch}.safetensors"
    cache = args.demo / "data" / "lesion"
    if not foundation.exists() or not (cache / "index.csv").exists():
        raise SystemExit(f"run `fedprostate demo --out {args.demo}` first ({foundation}, {cache})")
    base = base.replace(
        **{"data.cache": str(cache.resolve()), "fl.rounds": args.rounds, "compress.uplink": "fp32"}
    )
    results = {}
    for method in ("lora", "full"):
        for init in ("pretrained", "scratch"):
            name = f"{method}-{init}"
            run = args.out / name
            if not (run / "summary.json").exists():
                cfg = base.replace(
                    **{
                        "finetune.method": method,
                        "model.foundation": str(foundation.resolve())
                        if init == "pretrained"
                        else "",
                    }
                )
                federate(cfg, run)
            rounds = [
                json.loads(x)
                for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            ]
            reached = next(
                (
                    e["round"]
                    for e in rounds
                    if e["round"] > 0 and "val" in e and e["val"]["auroc"] >= args.target
                ),
                None,
            )
            test = predictions.read(run / "predictions_test_best.csv")
            ci = auroc_ci(test)
            summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
            results[name] = {
                "val": summary["val_auroc"],
                "test": ci,
                "best_round": summary["best_round"],
                "reached": reached,
                "rows": test,
            }
    table = Table(title=f"pre-trained (SimMIM) vs scratch: {arch}, {args.rounds} rounds, FedAdam")
    for col in (
        "arm",
        "best val AUROC",
        "test AUROC [95% CI]",
        f"first round val ≥ {args.target}",
        "Δ test AUROC pre-trained − scratch [95% CI], p",
    ):
        table.add_column(col)
    for method in ("lora", "full"):
        cmp = compare_models(
            results[f"{method}-scratch"]["rows"], results[f"{method}-pretrained"]["rows"]
        )
        b = cmp["bootstrap"]
        for init in ("pretrained", "scratch"):
            r = results[f"{method}-{init}"]
            delta = (
                f"{b['delta']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}], p={b['p_value']:.2f}"
                if init == "pretrained"
                else ""
            )
            table.add_row(
                f"{method}-{init}",
                f"{r['val']:.3f}",
                f"{r['test']['estimate']:.3f} [{r['test']['low']:.3f}, {r['test']['high']:.3f}]",
                str(r["reached"] or "not reached"),
                delta,
            )
    Console().print(table)


if __name__ == "__main__":
    main()
