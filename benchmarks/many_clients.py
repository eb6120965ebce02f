"""Many clients: seconds per round and peak memory of a Flower simulation with N clients.

Workload (stated): a small synthetic federation (``data synth --preset small``) re-dealt into N
clients by a Dirichlet(alpha) label-skew partition (``data.partition = dirichlet``), a tiny model
(``swin_test`` LoRA, 32 px, a few local steps), FedAvg, federated evaluation off. Each N runs in a
fresh process, so its peaks are its own: the server is that process (Flower's simulation runs the
ServerApp and every simulated node's state in it), the clients run in Ray actors, sampled with
psutil every 0.2 s. Then a memory model: server peak = a + b·N (least squares over the measured
N), actors bounded by the CPUs (``fl.client_cpus`` each), and the largest N a memory budget holds.

    python benchmarks/many_clients.py [--clients 10,30,100] [--rounds 2] [--budget-gib 24]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MIB = 1024 * 1024


def fit_line(ns: list[float], values: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ``values`` against ``ns``."""
    if len(set(ns)) < 2:
        raise ValueError("a line needs at least two different client counts")
    slope, intercept = np.polyfit(np.asarray(ns, float), np.asarray(values, float), 1)
    return float(intercept), float(slope)


def max_clients(intercept: float, slope: float, fixed: float, budget: float) -> int | None:
    """Largest N with ``intercept + slope·N + fixed <= budget`` (None: N does not bound it)."""
    room = budget - fixed - intercept
    if room < 0:
        return 0
    if slope <= 0:
        return None
    return int(room // slope)


class ProcessSampler(threading.Thread):
    """Peak RSS of this process's Ray actors (per pid) and of Ray's other processes (summed)."""

    def __init__(self, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.every_s, self.stop, self.actors, self.others_peak = every_s, threading.Event(), {}, 0

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            others = 0
            for proc in me.children(recursive=True):
                try:
                    rss = proc.memory_info().rss
                    if "ClientAppActor" in " ".join(proc.cmdline()):
                        self.actors[proc.pid] = max(self.actors.get(proc.pid, 0), rss)
                    else:
                        others += rss
                except psutil.Error:  # gone between listing and reading
                    continue
            self.others_peak = max(self.others_peak, others)
            self.stop.wait(self.every_s)


def make_cache(work: Path, sites: int, patients: int, crop: int) -> Path:
    from fedprostate.data.prepare import prepare
    from fedprostate.data.synth.federation import synthesize

    raw, cache = work / "raw", work / "cache"
    if not (cache / "index.csv").exists():
        synthesize(raw, sites=sites, patients=patients, seed=0, preset="small")
        prepare(raw, cache, crop=crop, progress=False)
    return cache


def measure(n: int, args) -> dict:
    """One N, in this process: the simulation and its peaks."""
    from fedprostate.config import RunConfig
    from fedprostate.engine import setup
    from fedprostate.runs.federated import federate

    cfg = RunConfig.from_flat(
        {
            "data.cache": str(args.cache),
            "data.partition": "dirichlet",
            "data.num_partitions": n,
            "data.dirichlet_alpha": args.alpha,
            "model.arch": args.arch,
            "model.crop": args.crop,
            "finetune.method": "lora",
            "finetune.lora_r": 4,
            "train.steps": args.steps,
            "train.batch_size": 8,
            "fl.rounds": args.rounds,
            "fl.strategy": "fedavg",
            "fl.fraction_train": args.fraction_train,
            "fl.fraction_evaluate": 0.0,
            "fl.eval_every": 1000,
            "fl.client_cpus": 1.0,
            "fl.min_train_nodes": 2,
            "fl.min_available_nodes": n,
            "fl.min_sites": 3,
        }
    )
    no_train = sum(len(setup.client_dataset(cfg, c, "train")) == 0 for c in setup.client_names(cfg))
    before_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sampler = ProcessSampler()
    sampler.start()
    run = Path(args.work) / f"run_{n}"
    t0 = time.perf_counter()
    federate(cfg, run)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    rounds = [
        json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").split("\n")
    if line]  # fmt: skip
    times = {r["round"]: r["time_s"] for r in rounds}
    actors = sorted(sampler.actors.values())
    return {
        "clients": n,
        "clients_without_training_crops": int(no_train),
        "round_s": [times[r] - times[r - 1] for r in range(1, args.rounds + 1)],
        "replies_last_round": len(rounds[-1].get("clients", [])),
        "wall_s": wall,
        "server_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "server_before_run_mib": before_mib,
        "actors": len(actors),
        "actor_peak_mib": [a / MIB for a in actors],
        "ray_other_peak_mib": sampler.others_peak / MIB,
    }


def table(rows: list[dict], budget_gib: float) -> dict:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="Many clients (one run each; server = the simulation's driver process)")
    cols = ("clients", "no train crops", "round 1 s", "last round s", "s per client (last)",
            "server peak MiB", "actors", "actor peak MiB (max)", "Ray's other MiB")  # fmt: skip
    for col in cols:
        out.add_column(col)
    for r in rows:
        last = r["round_s"][-1]
        out.add_row(
            str(r["clients"]), str(r["clients_without_training_crops"]), f"{r['round_s'][0]:.1f}",
            f"{last:.1f}", f"{last / r['clients']:.3f}", f"{r['server_peak_mib']:.0f}",
            str(r["actors"]), f"{max(r['actor_peak_mib'], default=0):.0f}",
            f"{r['ray_other_peak_mib']:.0f}",
        )  # fmt: skip
    Console().print(out)
    ns = [r["clients"] for r in rows]
    model: dict = {"budget_gib": budget_gib}
    if len(set(ns)) >= 2:
        a, b = fit_line(ns, [r["server_peak_mib"] for r in rows])
        actor_mib = max(max(r["actor_peak_mib"], default=0) for r in rows)
        n_actors = max(r["actors"] for r in rows)
        fixed = n_actors * actor_mib + max(r["ray_other_peak_mib"] for r in rows)
        model |= {"server_mib_at_0": a, "server_mib_per_client": b, "actors": n_actors,
                  "actor_mib": actor_mib, "fixed_mib": fixed,
                  "max_clients": max_clients(a, b, fixed, budget_gib * 1024)}  # fmt: skip
        print(
            f"memory model: server {a:.0f} MiB + {b:.3f} MiB/client; {n_actors} actors × "
            f"{actor_mib:.0f} MiB + Ray's other processes = {fixed:.0f} MiB fixed; "
            f"largest N in {budget_gib:g} GiB: "
            + (
                str(model["max_clients"])
                if model["max_clients"] is not None
                else "not bounded by N"
            )
        )
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="10,30,100", help="Comma-separated client counts.")
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--patients", type=int, default=300, help="Patients in the federation.")
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration.")
    ap.add_argument("--arch", default="swin_test")
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1, help="Local steps per client per round.")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fraction-train", type=float, default=1.0)
    ap.add_argument("--budget-gib", type=float, default=24.0)
    ap.add_argument("--work", type=Path, default=None, help="Data and runs (default: temp).")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: one N
    ap.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    args.work = args.work or Path(tempfile.mkdtemp(prefix="many_clients_"))
    cache = make_cache(args.work, args.sites, args.patients, args.crop)
    rows = []
    for n in (int(x) for x in args.clients.split(",")):
        argv = [sys.executable, __file__, "--one", str(n), "--cache", str(cache)]
        for key in ("alpha", "arch", "crop", "steps", "rounds", "fraction_train", "work"):
            argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        proc = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8",
                              env={**os.environ})  # fmt: skip
        if proc.returncode:
            sys.exit(f"N={n} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    model = table(rows, args.budget_gib)
    print(json.dumps({"rows": rows, "model": model}))


if __name__ == "__main__":
    main()
