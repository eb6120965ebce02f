"""benchmarks/gpu_study_slice.py: the Ray-free federated loop the GPU estimate of study-full uses."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_faults import SHAPES, _reply, _strategy, _tensors, server_identity  # noqa: F401

from fedprostate.config import RunConfig
from fedprostate.fl import wire

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_study_slice.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_study_slice", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("rounds", [1, 3])
def test_server_step_is_flowers_fedadam(rounds):
    """The slice's FedAdam equals Flower's FedAdam (through the project's strategy) round after
    round. Mutants: no bias correction, unweighted mean, v from m -> fail."""
    slice_ = _module()
    strategy = _strategy("fedadam")
    cfg = RunConfig.from_flat({"fl.strategy": "fedadam", "fl.min_train_nodes": 2})
    current, state = _tensors(0.0), {}
    for rnd in range(1, rounds + 1):
        a, b = _tensors(1.0 * rnd), _tensors(-2.0)
        replies = [_reply(1, "siteA", a, n=10), _reply(2, "siteB", b, n=30)]
        strategy.current_arrays = dict(current)
        flower, _ = strategy.aggregate_train(rnd, replies)
        current = slice_.fedadam_step(cfg, current, [a, b], [10, 30], state, rnd)
        for name in SHAPES:
            np.testing.assert_allclose(current[name], wire.from_record(flower)[name], rtol=1e-5)


@pytest.mark.slow
def test_runs_tiny_on_cpu(tmp_path):
    """Two sites, 8 patients, one round on CPU: the report names the device, no GPU figure."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "slice.json"
    args = ["--config", str(ROOT / "configs" / "study-medium.toml"), "--rounds", "1",
            "--sites", "2", "--patients", "8", "--device", "cpu", "--work", str(tmp_path),
            "--json", str(out)]  # fmt: skip
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, encoding="utf-8", timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["device"] == "cpu" and report["gpu"] is None
    assert [r["round"] for r in report["rounds"]] == [1] and report["study_cells"] == 60
    bad = subprocess.run([sys.executable, str(SCRIPT), "--config", str(tmp_path / "none.toml")],
                         env=env, capture_output=True, text=True, encoding="utf-8")  # fmt: skip
    assert bad.returncode == 2 and "none.toml" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
