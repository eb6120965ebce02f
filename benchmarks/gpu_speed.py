"""The training-speed arms of ``cpu_speed.py`` with accelerator defaults.

Defaults: CUDA when present, Swin-T at 224 px, batch 256, bf16 autocast, channels-last and
``torch.compile`` arms, an 8192² matmul for the bf16/fp32 peak; FLOPs from FlopCounterMode.
Without a GPU it runs the same arms on the CPU (no compile arm: inductor's CPU compile takes
minutes), which is how the test suite exercises it with tiny settings. Any option of
``cpu_speed.py`` given here overrides the default.

    python benchmarks/gpu_speed.py [--crop 224] [--batch 256] [--arch swin_tiny]
"""

from __future__ import annotations

import sys

import torch

from cpu_speed import main

if __name__ == "__main__":
    cuda = torch.cuda.is_available()
    defaults = ["--device", "cuda" if cuda else "cpu", "--crop", "224", "--batch", "256"]
    defaults += ["--peak-n", "8192", "--steps", "10", "--warmup", "3", "--channels-last"]
    if cuda:
        defaults.append("--compile")
    sys.argv[1:] = defaults + sys.argv[1:]  # argparse: a later value wins
    main()
