"""Does self-supervised pre-training help? Federated fine-tuning from a foundation vs from random init.

Uses what ``fedprostate demo --out DEMO`` leaves behind (the lesion crop cache of its synthetic
federation and the foundation pre-trained on its unlabeled pool, which shares no patient with any
site), or any ``--foundation CKPT`` (e.g. from ``fedprostate pretrain``) with ``--cache CACHE`` of
its crop size, and runs federated fine-tunings with the demo's configuration (FedAdam, fp32
uplink) and ``--set`` overrides: {``--arms``: LoRA, full} × {foundation, random init}. LoRA on a
random init = LoRA on the same architecture with random *frozen* weights (the same seed's init
every time). Both arms of a method share every setting (rounds, local epochs/steps, batch,
learning rates, seed, sites); only ``model.foundation`` differs.

Reported per arm, on the test split's **reader findings** (sampled tissue and proposals never
enter): the best validation AUROC and its round (chosen by the run on validation), the test AUROC
at that round with a patient-bootstrap 95% CI, the backbone each run actually trained on (the
foundation's file name and sha256, and the hash of the run's backbone as the run recorded it,
checked against the hash the benchmark computes for that arm), and the first round whose
validation AUROC reaches the target; per method the paired patient bootstrap of
foundation − random init on the same test findings.

Validation target (convergence; the goal: the foundation reaches it in at most half the rounds
of the random backbone): ``--target A`` a fixed validation AUROC, else (default)
``--target-fraction F`` × the best validation AUROC of the random-init arm of the same method
(F = 0.95). Only validation AUROCs enter it; the test split reaches no choice.

    python benchmarks/pretrain_vs_scratch.py --demo runs/demo --out runs/pretrain_vs_scratch [--rounds 20]
    python benchmarks/pretrain_vs_scratch.py --foundation runs/foundation_probe/dino.safetensors --cache runs/default-l32 --arms lora --rounds 20 --out runs/lora_from_dino

Prints a table and writes OUT/results.json and OUT/table.md; finished runs in OUT are reused when
they were trained on the same backbone and for the same number of rounds (else: exit 2).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedprostate.data.cache import load_meta
from fedprostate.demo import load_demo_config
from fedprostate.engine import setup
from fedprostate.eval.compare import compare_models
from fedprostate.eval.metrics import auroc_ci
from fedprostate.models.foundation import checkpoint_meta
from fedprostate.records import predictions
from fedprostate.runs.federated import federate

INITS = ("pretrained", "scratch")


def refuse(message: str) -> None:
    print(f"pretrain_vs_scratch: {message}", file=sys.stderr)
    raise SystemExit(2)


def reader_rows(rows: list[dict], what: str) -> list[dict]:
    """The headline of this benchmark: reader findings only."""
    out = [r for r in rows if r.get("source") == "reader"]
    if not out:
        refuse(f"{what}: no reader findings (sources: {sorted({r.get('source') for r in rows})})")
    return out


def val_curve(run: Path) -> list[tuple[int, float]]:
    """(round, validation AUROC) of every scored round after round 0."""
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    entries = [json.loads(x) for x in lines if x.strip()]
    return [
        (e["round"], e["val"]["auroc"])
        for e in entries
        if e["round"] > 0 and e.get("val", {}).get("auroc") is not None
    ]


def _ci(d: dict) -> str:
    if d.get("estimate") is None or math.isnan(d["estimate"]):
        return "– (one class)"
    return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def first_round_at(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((r for r, auc in curve if auc >= target), None)


def resolve_inputs(args, base):
    """(foundation checkpoint, crop cache, run config base) from --demo or --foundation/--cache."""
    if args.foundation is not None:
        if args.cache is None:
            refuse("--foundation needs --cache CACHE (a crop cache of the checkpoint's crop size)")
        if not args.foundation.is_file():
            refuse(f"--foundation {args.foundation}: no such checkpoint")
        meta = checkpoint_meta(args.foundation) or {}
        foundation, cache = args.foundation, args.cache
        base = base.replace(**{"model.arch": meta.get("arch", base.model.arch),
                               "model.crop": meta.get("crop", base.model.crop)})  # fmt: skip
    elif args.demo is not None:
        foundation = args.demo / "foundation" / f"{base.model.arch}.safetensors"
        cache = args.demo / "data" / "lesion"
    else:
        refuse("give --demo DEMO or --foundation CKPT --cache CACHE")
    if not foundation.is_file():
        refuse(f"no foundation checkpoint {foundation}")
    if not (cache / "index.csv").is_file():
        refuse(f"{cache}: not a crop cache (no index.csv)")
    cache_crop = int(load_meta(cache).get("crop", base.model.crop))
    if cache_crop != base.model.crop:
        refuse(f"{cache} holds {cache_crop} px crops, the foundation {foundation.name} is "
               f"{base.model.crop} px")  # fmt: skip
    return foundation.resolve(), cache.resolve(), base


def run_arm(cfg, run: Path, expected_sha: str) -> dict:
    """Run (or reuse) one arm; its summary, after checking the backbone it trained on."""
    if (run / "summary.json").exists():
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        if summary.get("foundation_sha256") != expected_sha or summary.get("rounds") != (
            cfg.fl.rounds
        ):
            refuse(f"{run} holds a run on another backbone or of another length "
                   f"({summary.get('rounds')} rounds): give another --out")  # fmt: skip
    else:
        summary = federate(cfg, run)
    if summary.get("foundation_sha256") != expected_sha:
        refuse(f"{run}: the run's backbone {str(summary.get('foundation_sha256'))[:12]}… is not "
               f"the expected {expected_sha[:12]}…")  # fmt: skip
    if summary.get("val_auroc") is None:
        refuse(f"{run}: no validation AUROC (one class only in the validation split?)")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, help="Output folder of `fedprostate demo`.")
    ap.add_argument("--foundation", type=Path, help="A foundation checkpoint (instead of --demo).")
    ap.add_argument("--cache", type=Path, help="Crop cache of the checkpoint's crop size.")
    ap.add_argument("--arms", default="lora,full", help="Fine-tuning methods to compare.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--target", type=float, default=None,
                    help="Fixed validation AUROC target (default: --target-fraction).")  # fmt: skip
    ap.add_argument("--target-fraction", type=float, default=0.95,
                    help="Target = this × the random-init arm's best validation AUROC.")  # fmt: skip
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    _, base = load_demo_config(None, args.overrides)
    foundation, cache, base = resolve_inputs(args, base)
    fmeta = checkpoint_meta(foundation) or {}
    base = base.replace(
        **{"data.cache": str(cache), "fl.rounds": args.rounds, "compress.uplink": "fp32"}
    )
    methods = args.arms.split(",")
    results: dict = {}
    for method in methods:
        for init in INITS:
            name = f"{method}-{init}"
            cfg = base.replace(**{"finetune.method": method,
                                  "model.foundation": str(foundation) if init == "pretrained" else ""})  # fmt: skip
            expected = setup.build_model(cfg, fresh=True).foundation_sha256
            summary = run_arm(cfg, args.out / name, expected)
            test = reader_rows(
                predictions.read(args.out / name / "predictions_test_best.csv"), name
            )
            results[name] = {
                "method": method,
                "init": init,
                "foundation": foundation.name if init == "pretrained" else "",
                "foundation_sha256": fmeta.get("sha256", "") if init == "pretrained" else "",
                "backbone_sha256": summary["foundation_sha256"],
                "best_round": summary["best_round"],
                "val_auroc": summary["val_auroc"],
                "test_auroc": auroc_ci(test, n_boot=args.n_boot),
                "n_test_findings": len(test),
                "n_test_patients": len({(r["site"], r["patient_id"]) for r in test}),
                "val_curve": val_curve(args.out / name),
                "rounds_run": max((r for r, _ in val_curve(args.out / name)), default=0),
                "rows": test,
            }
    for method in methods:
        if (
            results[f"{method}-pretrained"]["backbone_sha256"]
            == results[f"{method}-scratch"]["backbone_sha256"]
        ):
            refuse(f"{method}: both arms trained on the same backbone (foundation not loaded)")
    comparisons = {}
    for method in methods:
        pre, scratch = results[f"{method}-pretrained"], results[f"{method}-scratch"]
        target = (args.target if args.target is not None
                  else args.target_fraction * scratch["val_auroc"])  # fmt: skip
        for r in (pre, scratch):
            r["target"] = target
            r["first_round_at_target"] = first_round_at(r["val_curve"], target)
        b = compare_models(scratch["rows"], pre["rows"], n_boot=args.n_boot)["bootstrap"]
        a, s = pre["first_round_at_target"], scratch["first_round_at_target"]
        comparisons[method] = {
            "delta_test_auroc": {k: b[k] for k in ("delta", "low", "high", "p_value")},
            "ci_above_zero": b["low"] > 0,
            "target": target,
            "target_rule": (
                f"fixed {args.target}"
                if args.target is not None
                else f"{args.target_fraction} x best validation AUROC of {method}-scratch"
            ),  # fmt: skip
            "rounds_to_target": {"pretrained": a, "scratch": s},
            "at_most_half_the_rounds": (a is not None and s is not None and a <= s / 2),
        }
    kind = fmeta.get("pretrain", {}).get("method", "?")
    title = (f"{foundation.name} ({kind}, sha256 {fmeta.get('sha256', '?')[:12]}) vs random "
             f"init: {base.model.arch} @ {base.model.crop} px, {args.rounds} rounds, "
             f"{base.fl.strategy}")  # fmt: skip
    header = ["arm", "backbone", "best val AUROC (round)", "test AUROC [95% CI]",
              "first round val ≥ target", "Δ test AUROC foundation − random [95% CI], p"]  # fmt: skip
    rows = []
    for method in methods:
        c = comparisons[method]
        for init in INITS:
            r = results[f"{method}-{init}"]
            t = r["test_auroc"]
            backbone = (f"{r['foundation']} ({r['foundation_sha256'][:12]})" if init == "pretrained"
                        else f"random init (seed {base.seed})")  # fmt: skip
            d = c["delta_test_auroc"]
            rows.append([
                f"{method}-{init}", backbone, f"{r['val_auroc']:.3f} ({r['best_round']})",
                _ci(t),
                f"{r['first_round_at_target'] or 'not reached'} (target {c['target']:.3f})",
                (f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], p={d['p_value']:.2f}"
                 if init == "pretrained" else ""),
            ])  # fmt: skip
    table = Table(title=title)
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for method, c in comparisons.items():
        a, s = c["rounds_to_target"]["pretrained"], c["rounds_to_target"]["scratch"]
        if math.isnan(c["target"]):
            console.print(f"{method}: no validation target (validation AUROC undefined)")
            continue
        verdict = ("at most half the rounds" if c["at_most_half_the_rounds"] else
                   "more than half the rounds" if a is not None and s is not None else
                   "an arm never reached it")  # fmt: skip
        console.print(f"{method}: validation AUROC ≥ {c['target']:.3f} ({c['target_rule']}): "
                      f"foundation round {a or 'never'}, random init round {s or 'never'} "
                      f"within {args.rounds} rounds ({verdict}); Δ test CI above 0: "
                      f"{'yes' if c['ci_above_zero'] else 'no'}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    (args.out / "table.md").write_text(f"{title}\n\n" + "\n".join(md) + "\n", encoding="utf-8")
    out = {
        "foundation": str(foundation),
        "foundation_meta": {k: fmeta.get(k) for k in ("arch", "crop", "sha256", "pretrain")},
        "cache": str(cache),
        "rounds": args.rounds,
        "config": base.to_flat(),
        "arms": {k: {x: y for x, y in v.items() if x != "rows"} for k, v in results.items()},
        "comparisons": comparisons,
    }
    (args.out / "results.json").write_text(
        json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
