"""Flower's simulation on a multi-node Ray cluster joined through ``fl.ray_address``.

A head and a worker node run on this machine (``ray.cluster_utils.Cluster``: two raylets, two
object stores, two worker pools), one CPU each, so Flower's actor pool holds one ClientApp actor
per node. Every message the clients receive is recorded with the Ray node it ran on; the run must
use both nodes and end with the same model as the same run on a private single-node Ray.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedprostate.fl import simulation
from fedprostate.runs.federated import federate
from fl_fixtures import tiny_config, write_tiny_cache
from ray_fixtures import recorded, recording, two_node_cluster

pytestmark = pytest.mark.slow


def _federate_recorded(cfg, run: Path, log_dir: Path, monkeypatch) -> dict:
    make = simulation.make_client_app
    log_dir.mkdir()
    monkeypatch.setattr(simulation, "make_client_app", lambda flat: recording(make(flat), log_dir))
    try:
        federate(cfg, run)
    finally:
        monkeypatch.setattr(simulation, "make_client_app", make)
    rounds = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return {
        "model": load_file(str(run / "model.safetensors")),
        "rounds": list(map(json.loads, rounds)),
    }


def test_two_node_cluster_runs_clients_on_both_nodes_and_matches_one_node(tmp_path, monkeypatch):
    cache = write_tiny_cache(tmp_path / "cache")  # 3 sites
    knobs = {"fl.rounds": 1, "fl.client_cpus": 1.0, "fl.fraction_evaluate": 0.0}
    with two_node_cluster(cpus_per_node=1) as (address, node_names):
        cfg = tiny_config(cache, **knobs, **{"fl.ray_address": address})
        multi = _federate_recorded(cfg, tmp_path / "multi", tmp_path / "log_multi", monkeypatch)
    messages = recorded(tmp_path / "log_multi")
    ran_on = {node_names.get(m["node"], "outside the cluster") for m in messages}
    assert ran_on == {"head", "worker"}, f"client messages ran on {ran_on}"
    assert {(m["partition"], m["phase"]) for m in messages} >= {(p, "train") for p in range(3)}

    local = _federate_recorded(
        tiny_config(cache, **knobs), tmp_path / "local", tmp_path / "log_local", monkeypatch
    )
    assert {m["node"] for m in recorded(tmp_path / "log_local")}.isdisjoint(node_names)
    assert multi["model"].keys() == local["model"].keys()
    for name, value in multi["model"].items():
        # replies may arrive in another order: the aggregate is equal up to float rounding
        np.testing.assert_allclose(value, local["model"][name], rtol=1e-5, atol=1e-6)
    for split in ("val", "test"):
        for metric in ("loss", "auroc"):
            assert multi["rounds"][-1][split][metric] == pytest.approx(
                local["rounds"][-1][split][metric], rel=1e-5, abs=1e-6
            )
