"""Communication compression on the synthetic federation: method × codec → MB and AUROC.

For each arm a federated run (Flower simulation, FedAdam) is made on the same crop cache and
seed, then reported: MB up/down per client per round (bytes as Flower serializes them), the
cumulative MB (up + down, all clients) until the pooled validation AUROC first reaches
``--target``, the final test AUROC (best round chosen on validation) with a patient-bootstrap
95% CI, and a paired bootstrap over patients against fp32 LoRA: non-inferior when the CI of
ΔAUROC lies above −margin (pre-registered here: margin 0.02, α 0.05).

    python benchmarks/compression.py --work runs/compression [--arch swin_tiny] [--rounds 8]
        [--arms lora-fp32,lora-int8,...]   (finished arms are reused: resumable)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedprostate.config import RunConfig
from fedprostate.eval.compare import compare_models, verdict_from_comparison
from fedprostate.eval.metrics import auroc_ci
from fedprostate.records import predictions
from fedprostate.report.plots import plot_auroc_vs_mb
from fedprostate.runs.federated import federate

ALPHA, MARGIN = 0.05, 0.02
# arm name → (fine-tuning method, uplink codec, error feedback)
ARMS = {
    "lora-fp32": ("lora", "fp32", False),
    "lora-fp16": ("lora", "fp16", False),
    "lora-int8": ("lora", "int8:block=64", False),
    "lora-int4": ("lora", "int4:block=64", False),
    "lora-int2-ef": ("lora", "int2:block=64:stochastic", True),
    "ffa-fp32": ("ffa-lora", "fp32", False),
    "ffa-int4-ef": ("ffa-lora", "int4:block=64:stochastic", True),
    "ffa-int2-ef": ("ffa-lora", "int2:block=64:stochastic", True),
    "lora-top10-int4-ef": ("lora", "topk:0.1+int4:block=64", True),
    "ffa-top10-int4-ef": ("ffa-lora", "topk:0.1+int4:block=64", True),
}


def run_arm(base: RunConfig, name: str, work: Path) -> Path:
    method, codec, ef = ARMS[name]
    out = work / name
    if not (out / "summary.json").exists():
        cfg = base.replace(
            **{"finetune.method": method, "compress.uplink": codec, "compress.error_feedback": ef}
        )
        federate(cfg, out)
    return out


def arm_result(run: Path, target: float, reference: list[dict] | None) -> dict:
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    rounds = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    cum, cum_at_target, curve = 0.0, None, []
    for entry in rounds:
        cum += sum(c["bytes_up"] + c["bytes_down"] for c in entry.get("clients", [])) / 1e6
        if "val" in entry:
            curve.append((max(cum, 1e-6), entry["test"]["auroc"]))
            if cum_at_target is None and entry["round"] > 0 and entry["val"]["auroc"] >= target:
                cum_at_target = cum
    test = predictions.read(run / "predictions_test_best.csv")
    ci = auroc_ci(test)
    out = {
        "up_mb": summary["uplink_mb_per_client_round"],
        "down_mb": summary["downlink_mb_per_client_round"],
        "cum_mb_to_target": cum_at_target,
        "test_auroc": ci["estimate"],
        "ci": (ci["low"], ci["high"]),
        "curve": curve,
        "rows": test,
    }
    if reference is not None:
        cmp = compare_models(reference, test, n_boot=1000, seed=0, level=1 - ALPHA)
        out["delta"] = cmp["bootstrap"]["delta"]
        out["delta_ci"] = (cmp["bootstrap"]["low"], cmp["bootstrap"]["high"])
        out["verdict"] = verdict_from_comparison(
            cmp, claim="noninferior", alpha=ALPHA, margin=MARGIN
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument(
        "--cache", type=Path, default=None, help="Prepared crop cache (default: synthesize one)."
    )
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--patients", type=int, default=100)
    ap.add_argument("--arch", default="swin_tiny")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="Local steps per round.")
    ap.add_argument("--target", type=float, default=0.75, help="Validation AUROC target.")
    ap.add_argument("--arms", default=",".join(ARMS))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.cache
    if cache is None:
        from fedprostate.data.prepare import prepare
        from fedprostate.data.synth.federation import synthesize

        cache = args.work / "cache"
        if not (cache / "index.csv").exists():
            synthesize(
                args.work / "raw", sites=args.sites, patients=args.patients, seed=0, preset="small"
            )
            prepare(args.work / "raw", cache, crop=args.crop, progress=False)
    base = RunConfig.from_flat(
        {
            "data.cache": str(cache.resolve()),
            "model.arch": args.arch,
            "model.crop": args.crop,
            "train.steps": args.steps,
            "train.batch_size": 32,
            "train.lr": 1e-3,
            "fl.rounds": args.rounds,
            "fl.min_sites": min(3, args.sites),
            "fl.strategy": "fedadam",
            "fl.server_lr": 1e-2,
            "fl.fraction_evaluate": 0.0,
            "finetune.lora_r": 8,
        }
    )
    names = [a for a in args.arms.split(",") if a]
    if "lora-fp32" in names:  # the reference first
        names.remove("lora-fp32")
    names.insert(0, "lora-fp32")
    results: dict[str, dict] = {}
    for name in names:
        run = run_arm(base, name, args.work)
        ref = results["lora-fp32"]["rows"] if "lora-fp32" in results else None
        results[name] = arm_result(run, args.target, ref)

    table = Table(
        title=f"Compression: {args.arch} {args.crop} px, {args.rounds} rounds, FedAdam; "
        f"non-inferiority vs lora-fp32, margin {MARGIN}"
    )
    for col in (
        "arm",
        "up MB/client/round",
        "down MB",
        f"cum MB to val {args.target}",
        "test AUROC [95% CI]",
        "ΔAUROC [95% CI]",
        "verdict",
    ):
        table.add_column(col)
    for name, r in results.items():
        delta = (
            f"{r['delta']:+.3f} [{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}]"
            if "delta" in r
            else "reference"
        )
        cum = f"{r['cum_mb_to_target']:.2f}" if r["cum_mb_to_target"] is not None else "not reached"
        table.add_row(
            name,
            f"{r['up_mb']:.4f}",
            f"{r['down_mb']:.4f}",
            cum,
            f"{r['test_auroc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
            delta,
            r.get("verdict", ""),
        )
    Console().print(table)
    plot = plot_auroc_vs_mb(
        {n: r["curve"] for n, r in results.items()},
        args.work / "auroc_vs_mb.png",
        title="Test AUROC vs cumulative MB",
    )
    print(f"Pareto plot: {plot}")
    (args.work / "compression.json").write_text(
        json.dumps(
            {n: {k: v for k, v in r.items() if k != "rows"} for n, r in results.items()},
            indent=1,
            default=lambda x: float(x) if isinstance(x, np.floating) else str(x),
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
