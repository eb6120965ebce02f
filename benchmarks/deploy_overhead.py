"""Where a deployed round's time goes: one ClientApp message in a fresh process, phase by phase.

Flower 1.42 runs every message a SuperNode receives in a new ``flwr-clientapp`` process (both
``--isolation subprocess`` and ``process``: the latter only moves the launcher into
``flower-superexec``, which still starts one process per task). So each site pays, per message
(a round sends it two: train and evaluate), interpreter start, the imports (flwr, torch, timm,
peft), the model build and the crop-cache read before it trains. This script measures those
phases in a fresh child process ("before": no warm process), then sends a real training message
through the ClientApp handler (the site's mod chain included) from a fresh process that hands it
to the site's warm process ("after"), phase by phase, and says whether that process imported
torch: the part of a deployment round the warm per-site process removes.

    python benchmarks/deploy_overhead.py [--sites 2] [--arch swin_tiny] [--crop 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_SPAWN = "DEPLOY_OVERHEAD_T0"


def _child(cfg_path: str, site: str) -> None:
    """One ClientApp message from a cold start, then again warm; JSON phase times to stdout."""
    marks = [("spawn", float(os.environ[T_SPAWN])), ("interpreter", time.time())]
    import flwr.clientapp  # noqa: F401  (what flwr-clientapp itself loads)

    marks.append(("import flwr", time.time()))
    import torch  # noqa: F401

    marks.append(("import torch", time.time()))
    import timm  # noqa: F401  (pulls torchvision, which pulls torch._dynamo)

    marks.append(("import timm", time.time()))
    import peft  # noqa: F401

    marks.append(("import peft", time.time()))
    from fedprostate.config import RunConfig
    from fedprostate.engine import setup
    from fedprostate.fl.client import SiteContext, train_round

    marks.append(("import fedprostate", time.time()))
    cfg = RunConfig.load(cfg_path)
    setup.build_model(cfg)
    marks.append(("model build", time.time()))
    for split in ("train", "val"):
        setup.client_dataset(cfg, site, split)
    marks.append(("crop cache read", time.time()))
    site_ctx = SiteContext(site, None, "fp32")
    received = setup.build_model(cfg).initial_communicated
    train_round(cfg, site_ctx, 1, received)
    marks.append(("train + validate + encode", time.time()))
    t = time.time()
    train_round(cfg, site_ctx, 2, received)
    warm = time.time() - t
    phases = {b[0]: b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)}
    print(json.dumps({"phases": phases, "cold_s": marks[-1][1] - marks[0][1], "warm_s": warm}))


def _warm_child(cfg_path: str, site: str, arrays: str, state: str) -> None:
    """One training message through the real ClientApp handler (mod chain included) in a fresh
    process that hands its work to the site's warm process: where the seconds go, phase by phase.

    Imports made inside the handler (e.g. torch for the mod chain) are timed by wrapping
    ``__import__``; the hand-off (``warm.call``) is timed as a whole and split into the warm
    process's own work (its log line) and the rest (socket, pickling, waiting)."""
    import builtins

    marks = [("spawn", float(os.environ[T_SPAWN])), ("interpreter", time.time())]
    import flwr.clientapp  # noqa: F401

    from fedprostate.fl import warm
    from fedprostate.fl.client_app import make_client_app

    marks.append(("import flwr + the ClientApp", time.time()))
    import numpy as np
    from flwr.app import ConfigRecord, Context, Metadata, RecordDict
    from flwr.app.message.message import make_message

    from fedprostate.config import RunConfig
    from fedprostate.fl import wire

    received = dict(np.load(arrays))
    node_config = {"site": site, "state-dir": state, "warm-seconds": 60.0}
    context = Context(1, 7, node_config, RecordDict(), {})
    content = RecordDict(
        {
            "arrays": wire.to_record(received),
            "config": ConfigRecord({"server-round": 1, "downlink": "fp32"}),
        }
    )
    meta = Metadata(1, "m1", 1, 7, "", "1", time.time(), 3600.0, "train")
    msg = make_message(meta, content)
    app = make_client_app(RunConfig.load(cfg_path).to_flat())
    timers = {"imports": 0.0, "hand-off": 0.0}
    depth = [0]
    real_import, real_call = builtins.__import__, warm.call

    def timed_import(*args, **kwargs):
        depth[0] += 1
        t = time.perf_counter()
        try:
            return real_import(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                timers["imports"] += time.perf_counter() - t

    def timed_call(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real_call(*args, **kwargs)
        finally:
            timers["hand-off"] += time.perf_counter() - t

    marks.append(("read the message (here: npz → Message)", time.time()))
    builtins.__import__, warm.call = timed_import, timed_call
    t = time.time()
    reply = app(msg, context)
    total = time.time() - t
    builtins.__import__, warm.call = real_import, real_call
    assert not reply.has_error(), reply.error
    work = _warm_work_s(Path(state) / site)
    phases = {b[0]: b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)}
    phases["imports inside the handler (torch, timm, peft, mod chain)"] = timers["imports"]
    phases["rest of the handler here (model build, decode, encode, audit)"] = (
        total - timers["imports"] - timers["hand-off"]
    )
    phases["hand-off (socket, pickling)"] = timers["hand-off"] - work
    phases["warm process: its work"] = work
    print(
        json.dumps(
            {
                "phases": phases,
                "cold_s": time.time() - marks[0][1],
                "torch_here": "torch" in sys.modules,
            }
        )
    )


def _warm_work_s(state: Path) -> float:
    """Seconds the warm process spent on its last request (its log line)."""
    lines = (state / "warm.log").read_text(encoding="utf-8").splitlines()
    done = [line for line in lines if "warm process:" in line and " in " in line]
    return float(done[-1].split(" in ")[1].split(" s")[0]) if done else 0.0


def _spawn(args: list[str]) -> dict:
    env = dict(os.environ, **{T_SPAWN: repr(time.time())})
    out = subprocess.run(
        [sys.executable, __file__, *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(title: str, run: dict):
    from rich.table import Table

    table = Table(title=title)
    for col in ("phase", "seconds", "share"):
        table.add_column(col)
    for name, sec in run["phases"].items():
        table.add_row(name, f"{sec:.2f}", f"{sec / run['cold_s']:.0%}")
    table.add_row("message, total", f"{run['cold_s']:.2f}", "100%")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--arch", default="swin_tiny")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="local steps per message")
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes to time")
    ap.add_argument("--work", type=Path, default=None, help="data folder (default: temp)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--warm-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    if args.warm_child:
        _warm_child(*args.warm_child)
        return

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from fedprostate.config import RunConfig
    from fedprostate.data.prepare import prepare
    from fedprostate.data.synth.federation import synthesize
    from fedprostate.engine import setup

    work = args.work or Path(tempfile.mkdtemp(prefix="deploy_overhead_"))
    raw, cache = work / "raw", work / "cache"
    if not (cache / "index.csv").exists():
        synthesize(raw, sites=args.sites, patients=args.patients, seed=0, preset="small")
        prepare(raw, cache, crop=args.crop, progress=False)
    cfg = RunConfig.from_flat(
        {
            "data.cache": str(cache.resolve()),
            "model.arch": args.arch,
            "model.crop": args.crop,
            "finetune.method": "lora",
            "finetune.lora_r": 8,
            "train.steps": args.steps,
            "train.batch_size": 32,
            "train.threads": 1,  # what one client CPU gets in a deployment (fl.client_cpus = 1)
        }
    )
    cfg_path = work / "config.toml"
    cfg_path.write_text(cfg.to_toml(), encoding="utf-8")
    site = setup.client_names(cfg)[0]
    arrays = work / "received.npz"
    np.savez(arrays, **setup.build_model(cfg).initial_communicated)
    cold = [_spawn(["--child", str(cfg_path), site]) for _ in range(args.repeats)]
    state = work / "warm_state"
    warm_args = ["--warm-child", str(cfg_path), site, str(arrays), str(state)]
    _spawn(warm_args)  # the first message starts the warm site process (and pays its imports)
    warm = [_spawn(warm_args) for _ in range(args.repeats)]
    best_cold = min(cold, key=lambda r: r["cold_s"])  # least disturbed by other load
    best_warm = min(warm, key=lambda r: r["cold_s"])
    what = f"{args.arch} LoRA r=8, {args.crop} px, {args.steps} steps, 1 thread"
    console = Console()
    console.print(_table(f"Before: one ClientApp message, fresh process ({what})", best_cold))
    title = f"After: a training message through the ClientApp + warm site process ({what})"
    console.print(_table(title, best_warm))
    summary = Table(title=f"Per message (best of {args.repeats}; shared machine: ratios only)")
    for col in ("quantity", "value"):
        summary.add_column(col)
    summary.add_row("before (s)", f"{best_cold['cold_s']:.2f}")
    summary.add_row("after (s)", f"{best_warm['cold_s']:.2f}")
    summary.add_row("training in a warm process, no hand-off (s)", f"{best_cold['warm_s']:.2f}")
    summary.add_row("torch imported in the ClientApp process (after)", str(best_warm["torch_here"]))
    summary.add_row("before ÷ after", f"{best_cold['cold_s'] / best_warm['cold_s']:.1f}×")
    console.print(summary)
    print(json.dumps({"cold": cold, "warm": warm}))


if __name__ == "__main__":
    main()
