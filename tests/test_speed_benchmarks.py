"""The speed benchmarks run end to end with tiny settings (their numbers live in the docs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_readme import BENCH_KNOBS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_speed_table_has_every_arm_and_a_peak_share():
    """gpu_speed.py runs cpu_speed.py's arms with the accelerator defaults (here on the CPU);
    cpu_speed.py itself runs in tests/test_readme.py from the README's example."""
    script = "gpu_speed.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *BENCH_KNOBS[script]],
        capture_output=True, text=True, encoding="utf-8", env=env, check=True,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    arms = {(r["arm"], r["precision"], r["layout"]) for r in result["rows"]}
    assert ("lora stages=1", "bf16", "default") in arms and ("full", "fp32", "default") in arms
    assert ("lora", "fp32", "channels-last") in arms
    # LoRA in the last stage costs fewer FLOPs per image than LoRA everywhere (backward stops)
    flops = {r["arm"]: r["gflop_per_img"] for r in result["rows"]}
    assert flops["lora stages=1"] < flops["lora"] < flops["full"]
    assert all(0 < r["peak_share"] for r in result["rows"]) and result["peaks"]["fp32"] > 0
