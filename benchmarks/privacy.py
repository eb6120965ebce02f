"""Utility vs epsilon, the membership attack, and SecAgg+'s cost, on a small synthetic federation.

Arms (same data, model and rounds; LoRA on the MLPs + head, which DP-SGD on a Swin needs, in every
arm): no DP; client-level DP (server-side fixed clipping) and patient-level DP-SGD, each at the
noise the accountant says reaches the target epsilon (delta = 1 / training patients) after all
rounds; plain FedAvg vs SecAgg+ for the cost. Every run goes through the real ServerApp code
with the real ClientApps over an in-process Grid (no Ray), FedAvg. Test AUROC is the pooled test
split, with a patient-bootstrap 95% CI; the attacks are ``fedprostate audit`` (loss attack, and
LiRA offline/online with ``--shadows`` shadow models, per patient). The utility-vs-epsilon plot (``report.plots.plot_utility_vs_epsilon``) and the numbers
(JSON) are written next to each other (``--plot``, default WORK/utility_vs_epsilon.png).

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
from fedprostate.eval.metrics import evaluate_predictions
from fedprostate.fl.client_app import make_client_app
from fedprostate.fl.inproc import InProcessGrid
from fedprostate.fl.server import run_server
from fedprostate.records import predictions
from fedprostate.report.plots import plot_utility_vs_epsilon
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


def auroc_with_ci(out: Path, n_boot: int) -> dict:
    """Test AUROC of the shipped round (finding level) with its patient-bootstrap 95% CI."""
    rows = predictions.read(out / "predictions_test_best.csv")
    return evaluate_predictions(rows, n_boot=n_boot, seed=0)["lesion"]["auroc"]


def _auc(r: dict | None) -> str:
    return "-" if r is None else f"{r['auc']:.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"


def _value(x) -> float:
    return math.nan if x is None else float(x)


LEVEL_NAMES = {"client": "client level (server-fixed)", "patient": "patient level (DP-SGD)"}


def save_plot(rows: list[dict], path: Path, title: str) -> Path:
    """The utility-vs-epsilon plot and its numbers (``path`` with .json) from the result rows."""
    levels: dict[str, list] = {}
    no_dp = None
    for r in rows:
        point = (r["auroc"]["estimate"], r["auroc"]["low"], r["auroc"]["high"])
        if r["level"] == "none":
            no_dp = point
        else:
            levels.setdefault(LEVEL_NAMES[r["level"]], []).append((r["epsilon"], *point))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return plot_utility_vs_epsilon(levels, path, no_dp=no_dp, title=title)


def _federation(work: Path, args, sites: int, patients: int) -> RunConfig:
    """Synthesize and prepare (once) a small federation under ``work``; the benchmark's config."""
    raw, cache = work / "raw", work / "cache"
    if not (cache / "index.csv").exists():
        synthesize(raw, sites=sites, patients=patients, seed=0, preset="small")
        prepare(raw, cache, crop=args.crop, progress=False)
    return RunConfig.from_flat(
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
            "fl.min_sites": min(3, sites),
            "eval.n_boot": 50,
        }
    )


def secagg_cost(base: RunConfig, work: Path, sites: int, repeat: int = 2) -> Table:
    """Seconds and KB per site per round of plain FedAvg vs SecAgg+ on the same federation.

    The arms run alternately ``repeat`` times (plain, SecAgg+, plain, ...) and each keeps its
    fastest run: on a shared machine the first run also pays the imports and the model build.
    """
    cost = Table(title=f"SecAgg+ cost per round, {sites} sites (FedAvg, fp32 LoRA payload, "
                 f"best of {repeat} alternating runs)")  # fmt: skip
    for col in ("aggregation", "s / round", "KB up / site / round", "KB down / site / round"):
        cost.add_column(col, justify="left" if col == "aggregation" else "right")
    arms = {"plain FedAvg": {}, "SecAgg+": {"fl.secure_aggregation": True}}
    best: dict[str, tuple[float, list, list]] = {}
    for i in range(repeat):
        for name, dotted in arms.items():
            cfg = base.replace(**dotted, **{"fl.fraction_evaluate": 0.0})
            _, rounds, wall = _run(cfg, work / f"cost_{'secagg' if dotted else 'plain'}_{i}")
            per_round = wall / max(1, len(rounds))
            up = [c["bytes_up"] for r in rounds for c in r["clients"]]
            down = [c["bytes_down"] for r in rounds for c in r["clients"]]
            if name not in best or per_round < best[name][0]:
                best[name] = (per_round, up, down)
    for name, (per_round, up, down) in best.items():
        cost.add_row(name, f"{per_round:.1f}", f"{sum(up) / max(1, len(up)) / 1e3:.1f}",
                     f"{sum(down) / max(1, len(down)) / 1e3:.1f}")  # fmt: skip
    return cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument(
        "--patients", type=int, default=40, help="Patients in all (split over --sites)."
    )
    ap.add_argument("--arch", default="swin_test")
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="Local steps per round.")
    ap.add_argument("--eps", default="1,3,8", help="Target epsilons (comma-separated).")
    ap.add_argument("--shadows", type=int, default=4, help="LiRA shadow models (0: no LiRA).")
    ap.add_argument("--n-boot", type=int, default=1000, help="Bootstrap draws of the test CI.")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="PNG (default WORK/...).")
    ap.add_argument(
        "--secagg-sites",
        default="",
        help="Only the SecAgg+ cost, at these site counts "
        "(comma-separated; --patients scaled with the sites).",
    )
    ap.add_argument("--repeat", type=int, default=2, help="Alternating runs per SecAgg+ arm.")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="privacy_bench_"))
    console = Console(width=260)
    if args.secagg_sites:
        for n in [int(x) for x in args.secagg_sites.split(",") if x]:
            base = _federation(work / f"sites{n}", args, n, args.patients * n // args.sites)
            console.print(secagg_cost(base, work / f"sites{n}", n, args.repeat))
        return
    base = _federation(work, args, args.sites, args.patients)
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
        rows.append((level, eps, dotted, summary, attack, wall, auroc_with_ci(out, args.n_boot)))
    ref = _value(rows[0][6]["estimate"])
    table = Table(
        title=f"Utility vs epsilon: {args.sites} sites x {args.patients} patients, {args.arch} "
        f"LoRA (MLP) {args.crop} px, {args.rounds} rounds x {args.steps} steps, delta = {delta:.2g}"
    )
    for col in ("DP level", "target eps", "noise z", "reported eps", "test AUROC [95% CI]",
                "Δ vs no DP",
                "attack AUC (loss) [95% CI]", "LiRA offline [95% CI]", "LiRA online [95% CI]",
                "TPR@10% FPR (offline)", "DP AUC bound", "wall s", "LiRA s"):  # fmt: skip
        table.add_column(col, justify="left" if col == "DP level" else "right")
    results = []
    for level, eps, dotted, summary, attack, wall, ci in rows:
        z = dotted.get("privacy.noise_multiplier", dotted.get("privacy.dp_sgd_noise"))
        rep = (summary.get("privacy") or {}).get("epsilon_patient_bound", math.inf)
        auc = _value(ci["estimate"])
        if abs(auc - _value(summary.get("test_auroc"))) > 1e-9:  # (NaN: an undefined AUROC)
            print(f"note: {level} {eps:g}: summary test_auroc {summary.get('test_auroc')} != {auc}")
        loss = attack["attacks"]["loss"]
        lira = [attack["attacks"].get(f"lira_{v}") for v in ("offline", "online")]
        low = lira[0].get("tpr_at_fpr_0.1") if lira[0] else None
        results.append({"level": level, "epsilon": eps, "noise": z, "reported_epsilon": rep,
                        "auroc": ci, "attack_auc": loss["auc"],
                        "lira_offline_auc": lira[0]["auc"] if lira[0] else None,
                        "wall_s": wall})  # fmt: skip
        table.add_row(
            level, f"{eps:g}", f"{z:.3f}" if z else "-", f"{rep:.3g}",
            f"{auc:.3f} [{_value(ci['low']):.2f}, {_value(ci['high']):.2f}]",
            f"{auc - ref:+.3f}", *[_auc(a) for a in (loss, *lira)],
            "-" if low is None else f"{low:.2f}", f"{attack['privacy']['auc_bound']:.3f}",
            f"{wall:.0f}", f"{attack['lira']['wall_s']:.0f}" if "lira" in attack else "-",
        )  # fmt: skip
    console.print(table)
    plot = save_plot(
        results,
        args.plot or work / "utility_vs_epsilon.png",
        f"Test AUROC vs ε ({args.sites} sites x {args.patients} patients, {args.rounds} rounds)",
    )
    console.print(f"utility vs epsilon: {plot} (numbers: {plot.with_suffix('.json')})")

    console.print(secagg_cost(base, work, args.sites, args.repeat))


if __name__ == "__main__":
    main()
