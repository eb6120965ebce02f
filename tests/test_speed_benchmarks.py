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


def _many_clients():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "many_clients", ROOT / "benchmarks" / "many_clients.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_many_clients_memory_model_fits_a_line_and_finds_the_largest_federation():
    """The memory model of benchmarks/many_clients.py: server MiB = a + b·N fitted by least
    squares, then the largest N whose server + fixed (actors, Ray) memory fits the budget."""
    bench = _many_clients()
    a, b = bench.fit_line([10, 30, 100], [500 + 2 * n for n in (10, 30, 100)])
    assert (a, b) == pytest.approx((500, 2))
    a, b = bench.fit_line([10, 30, 100], [510, 555, 700])  # noisy: the least-squares line
    assert b == pytest.approx(2.1007, abs=1e-3) and a == pytest.approx(490.30, abs=0.01)
    assert bench.max_clients(500, 2, fixed=1000, budget=2000) == 250  # 500 + 2·250 + 1000
    assert bench.max_clients(500, 2, fixed=1000, budget=2001) == 250  # whole clients only
    assert bench.max_clients(500, 0.0, fixed=1000, budget=2000) is None  # N does not bound it
    assert bench.max_clients(1500, 2, fixed=1000, budget=2000) == 0  # over budget at N = 0
    with pytest.raises(ValueError, match="two different"):
        bench.fit_line([10, 10], [1, 2])


def _deploy_scale():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "deploy_scale", Path(__file__).parents[1] / "benchmarks" / "deploy_scale.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deploy_scale_groups_processes_by_kind_and_keeps_peaks():
    ds = _deploy_scale()
    assert ds.kind_of(["/v/bin/flower-supernode", "--superlink", "x"]) == "SuperNode"
    assert ds.kind_of(["/v/bin/python", "-m", "fedprostate.fl.warm", "/r/state"]) == (
        "warm site process"
    )
    assert ds.kind_of(["nginx: worker process"]) == "nginx"
    mib = 2**20
    samples = [
        {1: ("SuperLink", 100 * mib), 2: ("SuperNode", 50 * mib), 3: ("SuperNode", 60 * mib)},
        {1: ("SuperLink", 80 * mib), 2: ("SuperNode", 70 * mib), 4: ("SuperNode", 10 * mib)},
    ]
    out = ds.summarize(samples)
    # three SuperNode processes; the largest one peaked at 70; the kind's sum peaked at 110
    # (first instant: 50 + 60), not at the sum of per-process peaks (70 + 60 + 10 = 140)
    assert out["SuperNode"] == {"processes": 3, "peak_one_mib": 70, "peak_sum_mib": 110}
    assert out["SuperLink"]["peak_one_mib"] == 100
    assert out["all"]["peak_sum_mib"] == 210  # 100 + 50 + 60 at the first instant
