"""Faults in a real deployment (3 sites, TLS + auth behind the nginx front, signed app): a
SuperNode killed mid-round, a SuperLink killed mid-run. One deployment serves both checks (each
ClientApp start imports torch: slow)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from fedprostate.fl.deploy.deployment import LocalDeployment, deployment_config
from fl_fixtures import tiny_config, write_tiny_cache

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")),
        reason="nginx not installed (.ci/run installs it: apt-get install -y nginx)",
    ),
]

SITES = ("siteA", "siteB", "siteC")


def _rounds(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.5)


def test_node_killed_mid_round_and_superlink_killed_mid_run(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache", sites=SITES)
    out = tmp_path / "run"
    cfg = tiny_config(
        cache,
        # fl.min_sites = 2: this federation accepts a round from 2 of its 3 sites (the default 3
        # would, rightly, aggregate nothing while siteC is down)
        **{
            "fl.rounds": 3,
            "fl.fraction_evaluate": 0.0,
            "fl.round_timeout": 60.0,
            "fl.min_sites": 2,
        },
    )
    root = tmp_path / "deployment"
    # fl.min_available_nodes keeps its default (2): never forced to the number of sites (3).
    cfg = deployment_config(cfg, out, n_sites=3, sites_file=root / "sites.json")
    assert cfg.fl.min_available_nodes == 2
    with LocalDeployment(root, echo=lambda line: None) as dep:
        dep.start()
        for site in SITES:
            dep.register(site, train=12, val=4)
            dep.start_supernode(site, cache)
        for site in SITES:
            dep.wait_connected(site)
        run = dep.submit(cfg)
        try:
            # siteC loses power once it has received round 1's model.
            node_c = dep.supernodes["siteC"]
            _wait(lambda: "Receiving: train message" in node_c.log_text(), 300, "round 1")
            node_c.crash()
            _wait(lambda: len(_rounds(out)) >= 2, 400, "round 1 to end after its timeout")
            first = _rounds(out)[1]
            assert first["round"] == 1
            assert sorted(c["site"] for c in first["clients"]) == ["siteA", "siteB"]
            # It comes back (same key, same node id) and rejoins later rounds.
            dep.start_supernode("siteC", cache)
            _wait(lambda: len(_rounds(out)) >= 3, 400, "round 2")
            assert run.running()
            # The SuperLink dies during round 3.
            dep.crash_superlink()
        finally:
            run.stop()
        assert [r["round"] for r in _rounds(out)] == [0, 1, 2]
        dep.start_superlink()  # same database: registrations survive
        summary = dep.run(cfg.replace(resume=True), timeout=600)
    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]  # round 3 ran once, after the restart
    assert summary["rounds"] == 3
    later = [c["site"] for r in rounds[2:] for c in r["clients"]]
    assert "siteC" in later  # the node that died rejoined
    assert (out / "checkpoints" / "round_0003.safetensors").exists()
