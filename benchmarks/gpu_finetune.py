"""Full-size Swin-T fine-tuning cost on a GPU: 64 and 224 px, every fine-tuning method.

    python benchmarks/gpu_finetune.py [--crops 64 224] [--batch 64] [--steps 10] [--json out.json]

Per crop × method: trainable parameters, fp32 payload MB, training img/s (forward + backward +
AdamW, bf16 autocast, median of the timed steps after warm-up, synchronised), eval img/s and peak
GPU memory (torch.cuda.max_memory_allocated). Imports only the model modules (torch, timm, peft),
so it runs on a GPU machine without the project's data or Flower dependencies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fedprostate.config import FinetuneConfig
from fedprostate.models.backbones import create_backbone
from fedprostate.models.finetune import build_finetune, count_trainable, payload_bytes

METHODS = ("full", "linear", "adapter", "lora", "ffa-lora")


def _timed(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(arch: str, method: str, crop: int, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    ft = build_finetune(
        create_backbone(arch, crop=crop), arch, FinetuneConfig(method=method, lora_r=8)
    )
    model = ft.model.cuda()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(batch, 3, crop, crop, device="cuda")
    y = torch.randint(0, 2, (batch,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def eval_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x)

    torch.cuda.reset_peak_memory_stats()
    model.train()
    train_s = _timed(train_step, steps)
    peak = torch.cuda.max_memory_allocated() / 2**20
    model.eval()
    eval_s = _timed(eval_step, steps)
    row = {
        "arch": arch,
        "method": method,
        "crop": crop,
        "batch": batch,
        "trainable": count_trainable(ft),
        "payload_mb": payload_bytes(ft) / 1e6,
        "train_img_s": batch / train_s,
        "eval_img_s": batch / eval_s,
        "peak_mb": peak,
    }
    torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="swin_tiny")
    ap.add_argument("--crops", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU machine")
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = [measure(args.arch, m, c, args.batch, args.steps) for c in args.crops for m in METHODS]
    header = (
        f"{'crop':>4} {'method':<9} {'trainable':>11} {'MB':>7} {'train img/s':>11} "
        f"{'eval img/s':>10} {'peak MiB':>9}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['crop']:>4} {r['method']:<9} {r['trainable']:>11,} {r['payload_mb']:>7.2f} "
            f"{r['train_img_s']:>11.0f} {r['eval_img_s']:>10.0f} {r['peak_mb']:>9.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
