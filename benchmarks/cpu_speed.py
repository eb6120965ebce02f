"""Local training speed, arm by arm: img/s, FLOPs per image and the share of the measured peak.

Arms (each a training step = forward + backward + AdamW on random crops, the project's own
factory and fine-tuning code): full fine-tuning, LoRA everywhere, LoRA in the last N stages
(``finetune.lora_stages``), each in fp32 and bf16 autocast (``train.precision``), optionally
channels-last memory and ``torch.compile``. FLOPs per image are counted by torch's
FlopCounterMode (forward + backward); the matmul peak (fp32 and bf16) is measured in the same run
on the same threads, so "% of peak" compares like with like. Median of timed steps after warm-up.

    python benchmarks/cpu_speed.py [--arch swin_tiny] [--crop 64] [--batch 32] [--threads 2]
        [--stages 1 2] [--channels-last] [--compile] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fedprostate.config import FinetuneConfig
from fedprostate.models.backbones import create_backbone
from fedprostate.models.finetune import build_finetune


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, reps: int = 5) -> float:
    """FLOP/s of an n×n matmul, best of ``reps`` (the machine's practical peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def measure(args, method: str, stages: int, bf16: bool, channels_last: bool, compiled: bool):
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = create_backbone(args.arch, crop=args.crop, num_classes=2)
    spec = FinetuneConfig(method=method, lora_r=8, lora_stages=stages)
    model = build_finetune(backbone, args.arch, spec).model.to(device).train()
    x = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
    y = torch.randint(0, 2, (args.batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    run = torch.compile(model) if compiled else model
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(run(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops_per_img = counter.get_total_flops() / args.batch
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    return {"img_s": args.batch / sec, "gflop_per_img": flops_per_img / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="swin_tiny")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--stages", type=int, nargs="*", default=[1, 2], help="lora_stages arms")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true", help="add channels-last arms")
    ap.add_argument("--compile", action="store_true", help="add torch.compile arms")
    ap.add_argument("--no-bf16", action="store_true", help="fp32 arms only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--peak-n", type=int, default=2048, help="matmul size for the peak")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peaks = {"fp32": matmul_peak(torch.float32, device, args.peak_n)}
    if not args.no_bf16:
        peaks["bf16"] = matmul_peak(torch.bfloat16, device, args.peak_n)
    arms = [("full", 0), ("lora", 0), *(("lora", s) for s in args.stages)]
    variants = [(False, False, False)]
    if not args.no_bf16:
        variants.append((True, False, False))
    if args.channels_last:
        variants.append((False, True, False))
    if args.compile:
        variants.append((not args.no_bf16, False, True))
    rows = []
    for method, stages in arms:
        for bf16, cl, compiled in variants:
            r = measure(args, method, stages, bf16, cl, compiled)
            peak = peaks["bf16" if bf16 else "fp32"]
            r.update(
                arm=f"{method}" + (f" stages={stages}" if stages else ""),
                precision="bf16" if bf16 else "fp32",
                layout="channels-last" if cl else "default",
                compiled=compiled,
                peak_share=r["img_s"] * r["gflop_per_img"] * 1e9 / peak,
            )
            rows.append(r)
    base = next(r["img_s"] for r in rows if r["arm"] == "lora" and r["precision"] == "fp32")
    print(
        f"{args.arch} {args.crop} px, batch {args.batch}, {torch.get_num_threads()} threads, "
        f"{args.device}; matmul peak "
        + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
    )
    print("| arm | precision | layout | compiled | img/s | × LoRA fp32 | GFLOP/img | % of peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arm']} | {r['precision']} | {r['layout']} | {r['compiled']} | "
            f"{r['img_s']:.1f} | {r['img_s'] / base:.2f} | {r['gflop_per_img']:.3f} | "
            f"{100 * r['peak_share']:.1f} |"
        )
    print(json.dumps({"peaks": peaks, "rows": rows}))


if __name__ == "__main__":
    main()
