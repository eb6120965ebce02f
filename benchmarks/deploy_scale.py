"""A loopback deployment with N SuperNodes: seconds per round and the memory of every process kind.

Runs ``fedprostate deploy-local --sites N --data CACHE --out OUT --rounds R`` (TLS, SuperNode
authentication, the nginx Fleet front, a consortium-signed app, warm site processes) and samples
with psutil, every ``--every`` seconds, the resident memory (RSS) of every process the deployment
runs, grouped by kind: the SuperLink, the SuperNodes, the warm site processes, the one-message
ClientApp processes, Flower's SuperExec/ServerApp, nginx and the driving ``deploy-local``. A
process belongs to the deployment when it descends from the driver or names the run folder on its
command line (warm site processes start in their own session and outlive their parent). Round
times come from ``OUT/metrics.jsonl``.

    python benchmarks/deploy_scale.py --sites 17 --data CACHE [--rounds 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

KINDS = (  # (kind, what its command line contains), first match wins
    ("SuperLink", "flower-superlink"),
    ("SuperNode", "flower-supernode"),
    ("warm site process", "fedprostate.fl.warm"),
    ("ClientApp (one message)", "flwr-clientapp"),
    ("SuperExec / ServerApp", "flower-superexec"),
    ("SuperExec / ServerApp", "flwr-serverapp"),
    ("nginx", "nginx"),
    ("flwr run", "flwr run"),
    ("deploy-local (driver)", "deploy-local"),
)


def kind_of(cmdline: list[str]) -> str:
    """The process kind of a command line ("other" when none matches)."""
    text = " ".join(cmdline)
    for kind, needle in KINDS:
        if needle in text:
            return kind
    return "other"


def summarize(samples: list[dict[int, tuple[str, int]]]) -> dict[str, dict]:
    """Per kind: processes seen, peak RSS of one process, peak of the kind's summed RSS (MiB).

    ``samples`` holds, per sampling instant, pid -> (kind, RSS bytes)."""
    per_pid: dict[int, tuple[str, int]] = {}
    peak_sum: dict[str, int] = defaultdict(int)
    for sample in samples:
        sums: dict[str, int] = defaultdict(int)
        for pid, (kind, rss) in sample.items():
            sums[kind] += rss
            if pid not in per_pid or rss > per_pid[pid][1]:
                per_pid[pid] = (kind, rss)
        for kind, total in sums.items():
            peak_sum[kind] = max(peak_sum[kind], total)
    total_peak = max((sum(r for _, r in s.values()) for s in samples), default=0)
    out: dict[str, dict] = {}
    for kind in peak_sum:
        rss = [r for k, r in per_pid.values() if k == kind]
        out[kind] = {
            "processes": len(rss),
            "peak_one_mib": max(rss) / 2**20,
            "peak_sum_mib": peak_sum[kind] / 2**20,
        }
    out["all"] = {
        "processes": len(per_pid),
        "peak_one_mib": None,
        "peak_sum_mib": total_peak / 2**20,
    }
    return out


def _sample(driver: psutil.Process, out: Path) -> dict[int, tuple[str, int]]:
    marker = str(out.resolve())
    procs = {}
    try:
        procs = {p.pid: p for p in driver.children(recursive=True)}
        procs[driver.pid] = driver
    except psutil.Error:
        pass
    for p in psutil.process_iter(["cmdline"]):
        if marker in " ".join(p.info["cmdline"] or []):
            procs.setdefault(p.pid, p)
    sample = {}
    for pid, p in procs.items():
        try:
            sample[pid] = (kind_of(p.cmdline()), p.memory_info().rss)
        except psutil.Error:
            continue
    return sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=17)
    ap.add_argument("--data", type=Path, required=True, help="Crop cache with >= --sites sites.")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--every", type=float, default=0.5, help="Sampling period, seconds.")
    ap.add_argument("--set", action="append", default=[], help="Config override key=value.")
    ap.add_argument("--superlink-state", default="file", choices=("file", "memory"),
                    help="deploy-local's --superlink-state.")  # fmt: skip
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="deploy_scale_")) / "run"
    cmd = [
        str(Path(sys.executable).parent / "fedprostate"), "deploy-local",
        "--sites", str(args.sites), "--data", str(args.data), "--out", str(out),
        "--rounds", str(args.rounds), "--superlink-state", args.superlink_state,
        *[x for kv in args.set for x in ("--set", kv)],
    ]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)  # the driver's log lives beside the run
    t0 = time.monotonic()
    log = (out.parent / "deploy-local.log").open("w", encoding="utf-8")
    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    handle = psutil.Process(driver.pid)
    samples = []
    while driver.poll() is None:
        samples.append(_sample(handle, out))
        time.sleep(args.every)
    wall = time.monotonic() - t0
    log.close()
    if driver.returncode != 0:
        tail = (out.parent / "deploy-local.log").read_text(encoding="utf-8")[-2000:]
        sys.exit(f"deploy-local exited {driver.returncode}:\n{tail}")
    rounds = [
        json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").split("\n") if x
    ]
    times = [r["time_s"] for r in rounds]
    per_round = [round(b - a, 1) for a, b in zip(times, times[1:], strict=False)]
    print(f"deploy-local --sites {args.sites} --rounds {args.rounds}: {wall:.0f} s wall")
    print(f"seconds per round (rounds 1..{len(per_round)}): {per_round}")
    print(f"sites in each round: {[len(r.get('clients', [])) for r in rounds[1:]]}")
    print("| process kind | processes | peak RSS of one, MiB | peak RSS of all of the kind, MiB |")
    print("|---|---:|---:|---:|")
    for kind, row in sorted(summarize(samples).items(), key=lambda kv: -kv[1]["peak_sum_mib"]):
        one = "–" if row["peak_one_mib"] is None else f"{row['peak_one_mib']:.0f}"
        print(f"| {kind} | {row['processes']} | {one} | {row['peak_sum_mib']:.0f} |")


if __name__ == "__main__":
    main()
