"""Utility vs epsilon, the membership attack, and SecAgg+'s cost, on a small synthetic federation.

Arms (same data, model and rounds; LoRA on the MLPs + head, which DP-SGD on a Swin needs, in every
arm): no DP; client-level DP (server-side fixed clipping) and patient-level DP-SGD, each at the
noise the accountant says reaches the target epsilon (delta = 1 / training patients) after all
rounds; plain FedAvg vs SecAgg+ for the cost. Every run goes through the real ServerApp code
with the real ClientApps over an in-process Grid (no Ray), FedAvg. Test AUROC is the pooled test
split; the attacks are ``fedprostate audit`` (loss attack, and LiRA offline/online with
``--shadows`` shadow models, per patient).

    python benchmarks/privacy.py [--sites 3] [--patients 40] [--rounds 3] [--eps 1,3,8] [--shadows 4]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedprostate.config import RunConfig
from fedprostate.data.prepare import prepare
from fedprostate.data.synth.federation import synthesize
from fedprostate.engine import privacy, setup
from fedprostate.fl.client_app import make_client_app
from fedprostate.fl.inproc import InProcessGrid
from fedprostate.fl.server import run_server
from fedprostate.runs.audit import audit_run


def _run(cfg: RunConfig, out: Path) -> tuple[dict, list[dict], float]:
    cfg = cfg.replace(out=str(out))
    n = len(setup.client_names(cfg))
    t0 = time.perf_counter()
    summary = run_server(InProcessGrid(make_client_app(cfg.to_flat()), n), cfg)
    wall = time.perf_counter() - t0
    rounds = [
        json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").split("\n") if x
    ]
    return summary, [r for r in rounds if r["round"] > 0], wall


def _auc(r: dict | None) -> str:
    return "-" if r is None else f"{r['auc']:.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--patients", type=int, default=40, help="Patients per site.")
    ap.add_argument("--arch", default="swin_test")
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="Local steps per round.")
    ap.add_argument("--eps", default="1,3,8", help="Target epsilons (comma-separated).")
    ap.add_argument("--shadows", type=int, default=4, help="LiRA shadow models (0: no LiRA).")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="privacy_bench_"))
    raw, cache = work / "raw", work / "cache"
    if not (cache / "index.csv").exists():
        synthesize(raw, sites=args.sites, patients=args.patients, seed=0, preset="small")
        prepare(raw, cache, crop=args.crop, progress=False)
    base = RunConfig.from_flat(
        {
            "data.cache": str(cache),
            "model.arch": args.arch,
            "model.crop": args.crop,
            "finetune.method": "lora",
            "finetune.lora_r": 4,
            "finetune.lora_attn": False,
            "finetune.lora_mlp": True,
            "train.steps": args.steps,
            "train.batch_size": 16,
            "train.lr": 3e-3,
            "fl.strategy": "fedavg",
            "fl.rounds": args.rounds,
            "fl.min_sites": min(3, args.sites),
            "eval.n_boot": 50,
        }
    )
    delta = 1.0 / setup.federation_patients(base)
    sizes = {n: len(setup.client_dataset(base, n, "train")) for n in setup.client_names(base)}
    worst = min(sizes.values())
    q = privacy.dp_sgd_sample_rate(base.train, worst)
    steps = args.rounds * privacy.dp_sgd_steps(base.train, q)
    arms: list[tuple[str, float, dict]] = [("none", math.inf, {})]
    for eps in [float(e) for e in args.eps.split(",") if e]:
        z_client = privacy.noise_for(eps, 1.0, args.rounds, delta)
        z_patient = privacy.noise_for(eps, q, steps, delta)
        arms.append(("client", eps, {"privacy.client": "server-fixed",
                                     "privacy.noise_multiplier": z_client}))  # fmt: skip
        arms.append(("patient", eps, {"privacy.dp_sgd": True, "privacy.dp_sgd_noise": z_patient}))
    rows = []
    for level, eps, dotted in arms:
        cfg = base.replace(**dotted, **({"privacy.delta": delta} if dotted else {}))
        out = work / f"run_{level}_{eps:g}"
        summary, _, wall = _run(cfg, out)
        attack = audit_run(out, n_boot=200, shadows=args.shadows or None)
        rows.append((level, eps, dotted, summary, attack, wall))
    ref = rows[0][3].get("test_auroc", math.nan)
    table = Table(
        title=f"Utility vs epsilon: {args.sites} sites x {args.patients} patients, {args.arch} "
        f"LoRA (MLP) {args.crop} px, {args.rounds} rounds x {args.steps} steps, delta = {delta:.2g}"
    )
    for col in ("DP level", "target eps", "noise z", "reported eps", "test AUROC", "Δ vs no DP",
                "attack AUC (loss) [95% CI]", "LiRA offline [95% CI]", "LiRA online [95% CI]",
                "TPR@10% FPR (offline)", "DP AUC bound", "wall s", "LiRA s"):  # fmt: skip
        table.add_column(col, justify="left" if col == "DP level" else "right")
    for level, eps, dotted, summary, attack, wall in rows:
        z = dotted.get("privacy.noise_multiplier", dotted.get("privacy.dp_sgd_noise"))
        rep = (summary.get("privacy") or {}).get("epsilon_patient_bound", math.inf)
        auc = summary.get("test_auroc", math.nan)
        lira = [attack["attacks"].get(f"lira_{v}") for v in ("offline", "online")]
        low = lira[0].get("tpr_at_fpr_0.1") if lira[0] else None
        table.add_row(
            level, f"{eps:g}", f"{z:.3f}" if z else "-", f"{rep:.3g}", f"{auc:.3f}",
            f"{auc - ref:+.3f}", *[_auc(a) for a in (attack["attacks"]["loss"], *lira)],
            "-" if low is None else f"{low:.2f}", f"{attack['privacy']['auc_bound']:.3f}",
            f"{wall:.0f}", f"{attack['lira']['wall_s']:.0f}" if "lira" in attack else "-",
        )  # fmt: skip
    console = Console(width=260)
    console.print(table)

    cost = Table(title=f"SecAgg+ cost per round, {args.sites} sites (FedAvg, fp32 LoRA payload)")
    for col in ("aggregation", "s / round", "KB up / site / round", "KB down / site / round"):
        cost.add_column(col, justify="left" if col == "aggregation" else "right")
    for name, dotted in (("plain FedAvg", {}), ("SecAgg+", {"fl.secure_aggregation": True})):
        cfg = base.replace(**dotted, **{"fl.fraction_evaluate": 0.0})
        _, rounds, wall = _run(cfg, work / f"cost_{'secagg' if dotted else 'plain'}")
        up = [c["bytes_up"] for r in rounds for c in r["clients"]]
        down = [c["bytes_down"] for r in rounds for c in r["clients"]]
        per_round = wall / max(1, len(rounds))
        cost.add_row(name, f"{per_round:.1f}", f"{sum(up) / max(1, len(up)) / 1e3:.1f}",
                     f"{sum(down) / max(1, len(down)) / 1e3:.1f}")  # fmt: skip
    console.print(cost)


if __name__ == "__main__":
    main()
