"""Flower's overhead: a federated round's wall time ÷ the same clients' pure local training time.

Workload (stated, as the issue asks): N sites of a synthetic federation, Swin-T (or --arch) with
LoRA r=8 at 64 px, E local epochs per round, fp32, FedAdam, federated evaluation off and the
server-side benchmark scored only at the end, so the ratio isolates what Flower adds (message
passing, (de)serialization, Ray scheduling). Clients run one at a time with all cores in both
arms (``fl.client_cpus`` = cores), so the two arms do the same arithmetic on the same threads.
Round 1 also pays for starting Ray actors and building the model; it is reported apart.

``--site-val-every K`` runs the federation again with ``fl.site_val_every = K`` and prints its
ratio too; ``--profile`` runs it once more under cProfile and prints a round's time by phase
(``fl_profile.py``).

    python benchmarks/fl_overhead.py [--sites 4] [--arch swin_tiny] [--epochs 2] [--rounds 3]
        [--site-val-every 0] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedprostate.config import RunConfig
from fedprostate.data.prepare import prepare
from fedprostate.data.synth.federation import synthesize
from fedprostate.engine import setup
from fedprostate.engine.loop import train_local
from fedprostate.runs.federated import federate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--patients", type=int, default=80)
    ap.add_argument("--arch", default="swin_tiny")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--work", type=Path, default=None, help="Folder for data and runs (default: temp)."
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="Also run the federation once under cProfile and print where a round's time goes.",
    )
    ap.add_argument(
        "--site-val-every",
        type=int,
        default=None,
        help="Also run the federation with this fl.site_val_every (0 = the sites never score "
        "their validation split inside a training round) and print its ratio.",
    )
    args = ap.parse_args()
    cores = os.cpu_count() or 2
    work = args.work or Path(tempfile.mkdtemp(prefix="fl_overhead_"))
    raw, cache = work / "raw", work / "cache"
    if not (cache / "index.csv").exists():
        synthesize(raw, sites=args.sites, patients=args.patients, seed=0, preset="small")
        prepare(raw, cache, crop=args.crop, progress=False)
    cfg = RunConfig.from_flat(
        {
            "data.cache": str(cache),
            "model.arch": args.arch,
            "model.crop": args.crop,
            "finetune.method": "lora",
            "finetune.lora_r": 8,
            "train.epochs": args.epochs,
            "train.batch_size": 32,
            "train.threads": cores,
            "fl.rounds": args.rounds,
            "fl.strategy": "fedadam",
            "fl.fraction_evaluate": 0.0,
            "fl.eval_every": 1000,
            "fl.client_cpus": float(cores),
            "fl.min_train_nodes": args.sites,
            "fl.min_sites": min(3, args.sites),
            "fl.min_available_nodes": args.sites,
        }
    )

    # Pure local training: the same clients, the same loop, no Flower.
    names = setup.client_names(cfg)
    local_s = []
    for r in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        for name in names:
            bundle = setup.build_model(cfg)
            train_local(
                bundle.ft.model,
                setup.client_dataset(cfg, name, "train"),
                cfg.train,
                seed=setup.client_seed(cfg, r, name),
            )
        local_s.append(time.perf_counter() - t0)

    round_s, first_s = _federated_rounds(cfg, work / "run")
    cut = None
    if args.site_val_every is not None:  # the same federation with the sites' validation cut
        cut_cfg = cfg.replace(**{"fl.site_val_every": args.site_val_every})
        cut, _ = _federated_rounds(cut_cfg, work / "run_cut")
    local_med = statistics.median(local_s)
    ratio = statistics.median(round_s) / local_med if round_s else float("nan")
    per_site = local_med / len(names)
    rounds_per_hour_17 = 3600 / (17 * per_site * (statistics.median(round_s) / local_med))

    table = Table(
        title=f"Flower overhead: {len(names)} sites, {args.arch} LoRA r=8, {args.crop} px, "
        f"{args.epochs} local epochs, {cores} cores"
    )
    for col in ("quantity", "value"):
        table.add_column(col)
    n_train = sum(len(setup.client_dataset(cfg, n, "train")) for n in names)
    table.add_row("training crops per round (all sites)", str(n_train))
    table.add_row("pure local training per round, median (s)", f"{local_med:.2f}")
    table.add_row(
        "Flower round wall time, median of rounds 2.. (s)",
        f"{statistics.median(round_s):.2f}" if round_s else "n/a",
    )
    table.add_row("round 1 (actor start-up + model build) (s)", f"{first_s:.2f}")
    table.add_row("overhead ratio (goal ≤ 1.10)", f"{ratio:.3f}")
    cut_ratio = None
    if cut:
        cut_ratio = statistics.median(cut) / local_med
        what = f"fl.site_val_every = {args.site_val_every}"
        table.add_row(
            f"Flower round, {what}, median of rounds 2.. (s)", f"{statistics.median(cut):.2f}"
        )
        table.add_row(f"overhead ratio with {what}", f"{cut_ratio:.3f}")
    table.add_row(
        "rounds per hour, 17 sites of this size, one machine", f"{rounds_per_hour_17:.1f}"
    )
    console = Console()
    console.print(table)
    profiles = []
    if args.profile:  # each arm once more under cProfile: its time by phase, in-run ratio
        arms = [("default", cfg)]
        if args.site_val_every is not None:
            arms.append((f"fl.site_val_every = {args.site_val_every}", cut_cfg))
        for i, (name, arm_cfg) in enumerate(arms):
            profiles.append(
                {"arm": name, **_profile(console, arm_cfg, work / f"run_prof{i}", name)}
            )
    print(
        json.dumps(
            {
                "local_s": local_s,
                "round_s": round_s,
                "first_round_s": first_s,
                "ratio": ratio,
                "rounds_per_hour_17_sites": rounds_per_hour_17,
                "profiles": profiles,
                "cut_round_s": cut,
                "cut_ratio": cut_ratio,
            }
        )
    )


def _profile(console: Console, cfg: RunConfig, run: Path, arm: str) -> dict:
    """One profiled federation: its phase table, and the round ÷ the sites' training inside it
    (both measured in the same rounds, so other jobs' load moves them together)."""
    from fl_profile import TRAINING, profiled_federate

    start = 1 if cfg.fl.rounds >= 2 else 0  # round 1 pays for the actors' start-up
    profile = profiled_federate(federate, cfg, run, start)
    training = next((sec for phase, sec, _ in profile["rows"] if phase == TRAINING), 0.0)
    profile["in_run_ratio"] = profile["wall_per_round"] / training if training else float("nan")
    table = Table(
        title=f"Where a round goes ({arm}; cProfile, rounds {start + 1}–{cfg.fl.rounds}): "
        f"round {profile['wall_per_round']:.2f} s ÷ sites' training in it "
        f"= {profile['in_run_ratio']:.3f}"
    )
    for col in ("phase (server thread, then sites in the Ray actors)", "s per round", "share"):
        table.add_column(col)
    for phase, sec, share in profile["rows"]:
        table.add_row(phase, f"{sec:.3f}", f"{share:.1%}")
    console.print(table)
    return profile


def _federated_rounds(cfg: RunConfig, run: Path) -> tuple[list[float], float]:
    """(wall seconds of rounds 2.., of round 1) of one federated run."""
    federate(cfg, run)
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    times = {e["round"]: e["time_s"] for e in map(json.loads, lines)}
    rounds = cfg.fl.rounds
    return [times[r] - times[r - 1] for r in range(2, rounds + 1)], times[1] - times[0]


if __name__ == "__main__":
    main()
