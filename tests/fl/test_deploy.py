"""A real deployment on loopback: SuperLink + SuperNodes with TLS and SuperNode authentication.

Slow (every ClientApp is a fresh process that imports torch): two deployments in this file, the
first through the ``deploy-local`` command, the second only for the refused connections.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from fedprostate.cli import app
from fedprostate.fl.deploy.certs import make_node_keys, make_server_certificates
from fedprostate.fl.deploy.deployment import LocalDeployment
from fedprostate.runs.federated import federate
from fl_fixtures import tiny_config, write_tiny_cache

pytestmark = pytest.mark.slow

SETTINGS = {
    "model.arch": "swin_test",
    "model.crop": 32,
    "finetune.lora_r": 2,
    "train.batch_size": 8,
    "train.steps": 2,
    "train.lr": 3e-3,
    "train.threads": 1,
    "fl.server_lr": 0.05,
    "fl.fraction_evaluate": 0.0,  # federated evaluation: covered in-process (what leaves a site)
    "fl.round_timeout": 600.0,
    "eval.n_boot": 50,
}


def test_deploy_local_over_tls_with_auth_matches_simulation(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA", "siteB"))
    out = tmp_path / "deployed"
    args = ["deploy-local", "--sites", "2", "--cache", str(cache), "--out", str(out)]
    args += ["--rounds", "2"]
    for key, value in SETTINGS.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    logs = out / "deployment" / "logs"
    link_log = (logs / "superlink.log").read_text(encoding="utf-8")
    assert "Uvicorn running on https://127.0.0.1:" in link_log  # TLS
    assert "Activated node_id" in link_log
    for site in ("siteA", "siteB"):
        assert "SuperNode ID:" in (logs / f"supernode_{site}.log").read_text(encoding="utf-8")
    rounds = [
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    trained = [r for r in rounds if r["round"] > 0]
    assert [r["round"] for r in trained] == [1, 2]
    for entry in trained:
        assert sorted(c["site"] for c in entry["clients"]) == ["siteA", "siteB"]
        assert all(c["bytes_up"] > 0 and c["bytes_down"] > 0 for c in entry["clients"])
        assert entry["rejected"] == []

    # The same configuration in Flower's simulation gives the same model.
    cfg = tiny_config(cache, **SETTINGS)
    federate(cfg, tmp_path / "simulated")
    deployed = load_file(str(out / "model.safetensors"))
    simulated = load_file(str(tmp_path / "simulated" / "model.safetensors"))
    assert set(deployed) == set(simulated)
    initial_gap = 0.0
    for name in deployed:
        np.testing.assert_allclose(deployed[name], simulated[name], rtol=1e-5, atol=1e-6)
        initial_gap = max(initial_gap, float(np.abs(deployed[name]).max()))
    assert initial_gap > 0  # a real model, not an empty comparison
    # Every process is gone: nothing listens on the SuperLink's port any more.
    from fedprostate.fl.deploy.processes import port_open

    config = (out / "deployment" / "flwr" / "config.toml").read_text(encoding="utf-8")
    port = int(config.split("127.0.0.1:")[1].split('"')[0])
    assert not port_open(port)


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusals")
    dep = LocalDeployment(root / "deployment", echo=lambda line: None)
    try:
        dep.start_superlink()
        dep.register("siteA")
        yield dep
    finally:
        dep.close()


def _refused(dep: LocalDeployment, site: str, **kwargs):
    proc = dep.start_supernode(site, dep.root, max_wait_time=8, **kwargs)
    return proc


def test_refused_connections(superlink, tmp_path):
    dep = superlink
    rogue = make_node_keys(tmp_path / "rogue", "rogue")
    other_ca = make_server_certificates(tmp_path / "other_ca")
    registered_key = dep.node_keys("siteA").private_key
    procs = {
        "unregistered": _refused(dep, "unregistered", private_key=rogue.private_key),
        "plaintext": _refused(dep, "plaintext", insecure=True, authenticate=False),
        "plaintext_key": _refused(dep, "plaintext_key", insecure=True, private_key=registered_key),
        "wrong_ca": _refused(
            dep, "wrong_ca", private_key=registered_key, root_certificates=other_ca.ca_cert
        ),
        "no_key": _refused(dep, "no_key", authenticate=False),
    }
    codes = {name: proc.wait_exit(90) for name, proc in procs.items()}
    logs = {name: proc.log_text() for name, proc in procs.items()}
    for name, code in codes.items():
        assert code not in (None, 0), (name, logs[name][-1500:])
        assert "SuperNode ID:" not in logs[name], name
    assert "Failed to activate SuperNode" in logs["unregistered"]
    assert "CERTIFICATE_VERIFY_FAILED" in logs["wrong_ca"]
    assert "requires a secure TLS connection" in logs["plaintext_key"]
    link_log = dep.superlink.log_text()
    assert "Activated node_id" not in link_log
    # The registered key over TLS with the right CA is let in (the refusals were not an accident).
    dep.start_supernode("siteA", dep.root)
    dep.wait_connected("siteA")
    assert "Activated node_id" in dep.superlink.log_text()
