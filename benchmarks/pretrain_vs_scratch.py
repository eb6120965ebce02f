"""Does self-supervised pre-training help? Pre-trained vs scratch initialisation, LoRA and full FT.

Uses what ``fedprostate demo --out DEMO`` leaves behind (the lesion crop cache of its synthetic
federation and the foundation pre-trained on its unlabeled pool, which shares no patient with any
site), or any ``--foundation CKPT`` with ``--cache CACHE`` of its crop size, and runs federated
fine-tunings with the demo's configuration (FedAdam, fp32) and ``--set`` overrides:
{``--arms``: LoRA, full} × {foundation, random init} (LoRA on a random init = LoRA on a random
*frozen* backbone). Reports the best validation AUROC, the test AUROC at that round with a
patient-bootstrap 95% CI, the first round whose validation AUROC reaches ``--target``
(convergence; the goal is at most half the rounds of the random backbone), and the paired patient
bootstrap of pre-trained − scratch on the test findings.

    python benchmarks/pretrain_vs_scratch.py --demo runs/demo --out runs/pretrain_vs_scratch [--rounds 20]
    python benchmarks/pretrain_vs_scratch.py --foundation runs/foundation_probe/dino.safetensors --cache runs/default-l32 --arms lora --rounds 20 --out runs/lora_from_dino
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
from fedprostate.models.foundation import checkpoint_meta
from fedprostate.records import predictions
from fedprostate.runs.federated import federate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, help="Output folder of `fedprostate demo`.")
    ap.add_argument("--foundation", type=Path, help="A foundation checkpoint (instead of --demo).")
    ap.add_argument("--cache", type=Path, help="Crop cache of the checkpoint's crop size.")
    ap.add_argument("--arms", default="lora,full", help="Fine-tuning methods to compare.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--target", type=float, default=0.70)
    args = ap.parse_args()
    _, base = load_demo_config(None, args.overrides)
    if args.foundation is not None:
        meta = checkpoint_meta(args.foundation) or {}
        foundation, cache = args.foundation, args.cache
        base = base.replace(**{"model.arch": meta.get("arch", base.model.arch),
                               "model.crop": meta.get("crop", base.model.crop)})  # fmt: skip
    elif args.demo is not None:
        foundation = args.demo / "foundation" / f"{base.model.arch}.safetensors"
        cache = args.demo / "data" / "lesion"
    else:
        raise SystemExit("give --demo DEMO or --foundation CKPT --cache CACHE")
    arch = base.model.arch
    if not foundation.exists() or cache is None or not (cache / "index.csv").exists():
        raise SystemExit(f"no foundation {foundation} or crop cache {cache}")
    base = base.replace(
        **{"data.cache": str(cache.resolve()), "fl.rounds": args.rounds, "compress.uplink": "fp32"}
    )
    methods = args.arms.split(",")
    results = {}
    for method in methods:
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
    kind = (checkpoint_meta(foundation) or {}).get("pretrain", {}).get("method", "?")
    table = Table(title=f"pre-trained ({kind}) vs scratch: {arch}, {args.rounds} rounds, FedAdam")
    for col in (
        "arm",
        "best val AUROC",
        "test AUROC [95% CI]",
        f"first round val ≥ {args.target}",
        "Δ test AUROC pre-trained − scratch [95% CI], p",
    ):
        table.add_column(col)
    for method in methods:
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
    for method in methods:
        pre, scratch = (
            results[f"{method}-pretrained"]["reached"],
            results[f"{method}-scratch"]["reached"],
        )
        if pre is not None and scratch is not None:
            verdict = "at most half" if pre <= scratch / 2 else "more than half"
            Console().print(
                f"{method}: validation AUROC ≥ {args.target} at round {pre} from the foundation, "
                f"{scratch} from random init ({verdict} the rounds)"
            )
        else:
            Console().print(
                f"{method}: validation AUROC ≥ {args.target}: foundation {pre or 'never'}, "
                f"random init {scratch or 'never'} within {args.rounds} rounds"
            )


if __name__ == "__main__":
    main()
