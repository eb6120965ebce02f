"""Cost of every backbone × fine-tuning method: size of what travels, speed, memory, efficiency.

    python benchmarks/finetune_cost.py [--crop 64|224] [--batch 32] [--quick] [--json out.json]

Per combination (each measured in its own subprocess so peak memory is its own):
trainable parameters, fp32 payload MB (communicated set), train img/s (forward + backward + AdamW
step; fastest of the timed steps, since the cores may be shared), eval img/s (no_grad forward,
fastest batch), peak memory (peak RSS above the RSS after building the model,
Linux VmHWM after resetting it via /proc/self/clear_refs), and training FLOP/s (FLOPs of one step
counted by torch.utils.flop_counter) as a fraction of an fp32 matmul peak (a 2048² torch.mm) timed
in the same run with the same threads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BACKBONE_NAMES = ("swin_tiny", "resnet50", "vit_small", "vit_base")
METHOD_NAMES = ("full", "linear", "adapter", "lora", "ffa-lora")


def matmul_peak_gflops(n: int = 2048, reps: int = 8) -> float:
    import torch

    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    b = torch.randn(n, n, generator=torch.Generator().manual_seed(1))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):  # best of several: the machine is shared
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")
    except OSError:
        pass


def _best_time(fn, iters: int) -> float:
    """Fastest of ``iters`` calls: other processes share the cores, the minimum is the least
    disturbed estimate of the machine's own speed."""
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_one(arch: str, method: str, crop: int, batch: int, iters: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fedprostate.config import FinetuneConfig
    from fedprostate.models.backbones import create_backbone
    from fedprostate.models.finetune import build_finetune, count_trainable, payload_bytes

    torch.manual_seed(0)
    ft = build_finetune(create_backbone(arch, crop=crop), arch, FinetuneConfig(method=method))
    model = ft.model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, crop, crop, generator=g)
    y = torch.randint(0, 2, (batch,), generator=g)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    base_rss = _rss_mb("VmRSS")
    _reset_peak_rss()
    counter = FlopCounterMode(display=False)
    with counter:  # the counted step doubles as warm-up
        step()
    flops_per_step = counter.get_total_flops()
    frozen_with_grad = [
        n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None
    ]
    train_s = _best_time(step, iters)
    peak_mb = _rss_mb("VmHWM") - base_rss
    model.eval()
    with torch.no_grad():
        model(x)
        eval_s = _best_time(lambda: model(x), iters)
    return {
        "arch": arch,
        "method": method,
        "trainable": count_trainable(ft),
        "payload_mb": payload_bytes(ft) / 1e6,
        "train_img_s": batch / train_s,
        "eval_img_s": batch / eval_s,
        "peak_mb": peak_mb,
        "train_gflop_s": flops_per_step / train_s / 1e9,
        "gflop_per_img": flops_per_step / batch / 1e9,
        "frozen_with_grad": len(frozen_with_grad),
    }


def print_table(rows: list[dict], peak: float, args) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    title = (
        f"fine-tuning cost at {args.crop} px, batch {args.batch}, {args.iters} timed steps, "
        f"{torch.get_num_threads()} threads; fp32 matmul peak {peak:.0f} GFLOP/s"
    )
    table = Table(title=title)
    for col in (
        "backbone",
        "method",
        "trainable",
        "payload MB",
        "train img/s",
        "eval img/s",
        "peak MB",
        "GFLOP/img",
        "train % peak",
    ):
        table.add_column(col, justify="left" if col in ("backbone", "method") else "right")
    for r in rows:
        table.add_row(
            r["arch"],
            r["method"],
            f"{r['trainable']:,}",
            f"{r['payload_mb']:.2f}",
            f"{r['train_img_s']:.1f}",
            f"{r['eval_img_s']:.1f}",
            f"{r['peak_mb']:.0f}",
            f"{r['gflop_per_img']:.2f}",
            f"{100 * r['train_gflop_s'] / peak:.0f}%",
        )
    Console(width=140).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="3 timed steps instead of 10")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONE_NAMES))
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--one", nargs=2, metavar=("ARCH", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--iters", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.iters = args.iters or (3 if args.quick else 10)
    if args.one:
        print(json.dumps(measure_one(*args.one, args.crop, args.batch, args.iters)))
        return
    peak = matmul_peak_gflops()
    rows = []
    for arch in args.backbones:
        for method in args.methods:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                arch,
                method,
                "--crop",
                str(args.crop),
                "--batch",
                str(args.batch),
                "--iters",
                str(args.iters),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{arch}/{method} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{arch:10s} {method:9s} train {r['train_img_s']:6.1f} img/s", file=sys.stderr)
    peak = max(peak, matmul_peak_gflops())  # measured again at the end: the machine is shared
    print_table(rows, peak, args)
    if args.json:
        args.json.write_text(
            json.dumps({"matmul_peak_gflops": peak, "rows": rows}, indent=2), encoding="utf-8"
        )


if __name__ == "__main__":
    main()
