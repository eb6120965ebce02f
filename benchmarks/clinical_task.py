"""The clinical task, measured: federated vs centralized fine-tuning against the radiologist.

On a prepared lesion cache of reader findings (``data prepare`` of a synthetic federation with
its radiology table), runs the federated recipe (Flower simulation) and the same recipe
centralized (equal compute: the pooled round trains sites x ``train.steps`` steps, as many
examples as the federated round), then scores both on the test split's reader findings with patient-bootstrap CIs
and compares them, by the paired patient bootstrap, with the radiologist's PI-RADS, the
mean-ADC rule (same findings) and PSA density (same patients), and federated with centralized
(non-inferiority, margin 0.02). Every choice (round, threshold, temperature) is made on
validation by the runs themselves; the test split is only read here, at the end.

    python benchmarks/clinical_task.py --cache CACHE --work runs/clinical --arch swin_test \\
        --crop 64 --rounds 20 --steps 20

Prints a Markdown table and writes WORK/clinical_task.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fedprostate.config import RunConfig
from fedprostate.eval.compare import compare_models, verdict_from_comparison
from fedprostate.eval.metrics import headline
from fedprostate.report.run_data import (
    adc_baseline_rows,
    evaluate_run,
    load_run,
    pirads_baseline_rows,
)
from fedprostate.runs.federated import federate
from fedprostate.runs.pooled import centralize

MARGIN = 0.02


def recipe(args) -> RunConfig:
    return RunConfig.load(args.config, [
        f"data.cache={args.cache}", f"model.arch={args.arch}", f"model.crop={args.crop}",
        f"fl.rounds={args.rounds}", f"train.steps={args.steps}", f"train.lr={args.lr}",
        f"train.batch_size={args.batch}", f"train.sampled_weight={args.sampled_weight}",
        f"fl.patience={args.patience}", f"train.schedule={args.schedule}",
        f"train.warmup_rounds={args.warmup}", f"eval.n_boot={args.n_boot}",
        f"fl.server_lr={args.server_lr}", *args.set,
    ])  # fmt: skip


def _ci(d) -> str:
    if d is None or d.get("estimate") is None:
        return "–"
    return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def _delta(comp: dict) -> str:
    b = comp["bootstrap"]
    return f"{b['delta']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}], p {b['p_value']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--arch", default="swin_tiny")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--server-lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sampled-weight", type=float, default=1.0)
    ap.add_argument("--patience", type=int, default=0)
    ap.add_argument("--schedule", default="constant")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[], help="Extra config key=value.")
    ap.add_argument("--skip-centralized", action="store_true")
    args = ap.parse_args()
    cfg = recipe(args)
    args.work.mkdir(parents=True, exist_ok=True)
    runs = {"federated": (federate, args.work / "federated", cfg)}
    if not args.skip_centralized:
        # Equal compute: a federated round trains every site for train.steps; the centralized
        # round trains the pooled data for sites x train.steps (same examples seen per round).
        sites = json.loads((args.cache / "meta.json").read_text(encoding="utf-8"))["sites"]
        central = cfg.replace(**{"train.steps": cfg.train.steps * len(sites)})
        runs["centralized"] = (centralize, args.work / "centralized", central)
    seconds = {}
    for name, (fn, out, run_cfg) in runs.items():
        if not (out / "summary.json").exists():
            t0 = time.time()
            fn(run_cfg, out)
            seconds[name] = time.time() - t0
    data = {name: load_run(out) for name, (_, out, _) in runs.items()}
    evals = {name: evaluate_run(d, n_boot=args.n_boot) for name, d in data.items()}
    fed = data["federated"]
    lesion = headline(fed.test)
    rules = {
        "PI-RADS (radiologist)": pirads_baseline_rows(fed),
        "mean-ADC rule": adc_baseline_rows(fed),
    }
    rows, comps = [], {}
    for name, ev in evals.items():
        m = ev["model"]
        rows.append([name, m["n_findings"], m["n_patients"], _ci(m["lesion"]["auroc"]),
                     _ci(m["lesion"]["ap"]), _ci(m["patient"]["auroc"])])  # fmt: skip
    for name, res in evals["federated"]["baselines"].items():
        rows.append([name, res["n_findings"], res["n_patients"], _ci(res["lesion"]["auroc"]),
                     _ci(res["lesion"]["ap"]), _ci(res["patient"]["auroc"])])  # fmt: skip
    for name, rule in rules.items():
        if rule is not None:
            comps[f"federated − {name}"] = compare_models(rule, lesion, n_boot=args.n_boot)
    if "centralized" in data:
        comp = compare_models(headline(data["centralized"].test), lesion, n_boot=args.n_boot)
        comp["verdict"] = verdict_from_comparison(
            comp, claim="noninferior", alpha=0.05, margin=MARGIN
        )
        comps["federated − centralized"] = comp
    val = [e["val"]["auroc"] for e in fed.rounds if "val" in e and e["round"] > 0]
    out = {
        "config": cfg.to_flat(),
        "seconds": seconds,
        "summary": {k: d.summary for k, d in data.items()},
        "table": rows,
        "comparisons": {
            k: {"bootstrap": v["bootstrap"], "verdict": v.get("verdict")} for k, v in comps.items()
        },  # fmt: skip
        "val_auroc_by_round": val,
        "val_auroc_std_last5": float(np.std(val[-5:])) if len(val) >= 5 else None,
    }
    (args.work / "clinical_task.json").write_text(json.dumps(out, indent=1, default=str),
                                                  encoding="utf-8")  # fmt: skip
    print("| model | findings | patients | AUROC lesion | AP lesion | AUROC patient |")
    print("|---|---:|---:|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()
    for name, comp in comps.items():
        verdict = (
            f" — non-inferior (margin {MARGIN})? {comp['verdict']}" if "verdict" in comp else ""
        )
        print(f"- {name}: Δ {_delta(comp)}{verdict}")
    print(f"- validation AUROC std over the last 5 rounds: {out['val_auroc_std_last5']}")
    print(f"- wall time: {seconds}")


if __name__ == "__main__":
    main()
