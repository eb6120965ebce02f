"""A real deployment on loopback: SuperLink on loopback, nginx in front (Fleet API only), TLS,
SuperNode authentication, a consortium-signed app and SuperNodes with --trusted-entities.

Slow (every ClientApp is a fresh process that imports torch): the first test runs deploy-local
three times (the run, a no-op resume, a forced longer resume) and one simulation; the module
fixture serves the refusals (no training); the last test is one more deploy-local whose app is
signed with the wrong key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
import tomli_w
from safetensors.numpy import load_file
from typer.testing import CliRunner

from fedprostate.cli import app
from fedprostate.fl.deploy.app import flower_bin
from fedprostate.fl.deploy.certs import make_node_keys, make_server_certificates
from fedprostate.fl.deploy.deployment import LocalDeployment, deployment_config
from fedprostate.fl.deploy.signing import make_signing_key
from fedprostate.records.audit import AuditLog, verify_chain
from fedprostate.runs.federated import federate
from fl_fixtures import tiny_config, write_tiny_cache

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")),
        reason="nginx not installed (.ci/run installs it: apt-get install -y nginx)",
    ),
]

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


def _args(cache: Path, out: Path, sites: int, rounds: int, **extra) -> list[str]:
    args = ["deploy-local", "--sites", str(sites), "--cache", str(cache), "--out", str(out)]
    args += ["--rounds", str(rounds)]
    for key, value in {**SETTINGS, **extra}.items():
        args += ["--set", f"{key}={value}"]
    return args


def _rounds(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_deploy_local_behind_the_proxy_with_a_signed_app_matches_simulation(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA", "siteB"))
    out = tmp_path / "deployed"
    runner = CliRunner()
    result = runner.invoke(app, _args(cache, out, 2, 2), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    dep = out / "deployment"
    link_log = (dep / "logs" / "superlink.log").read_text(encoding="utf-8")
    assert "Uvicorn running on https://127.0.0.1:" in link_log  # TLS, loopback only
    assert "Activated node_id" in link_log
    for site in ("siteA", "siteB"):
        assert "SuperNode ID:" in (dep / "logs" / f"supernode_{site}.log").read_text("utf-8")
    # The SuperNodes reached the SuperLink only through nginx, and only Fleet routes passed.
    access = (dep / "proxy" / "logs" / "access.log").read_text(encoding="utf-8").splitlines()
    assert access and all('"POST /v1/fleet/' in line and '" 200 ' in line for line in access)
    trained = [r for r in _rounds(out) if r["round"] > 0]
    assert [r["round"] for r in trained] == [1, 2]
    for entry in trained:
        assert sorted(c["site"] for c in entry["clients"]) == ["siteA", "siteB"]
        assert all(c["bytes_up"] > 0 and c["bytes_down"] > 0 for c in entry["clients"])
        assert entry["rejected"] == []

    # Audit log at the coordinator: registrations, the signed run and by whom, every round.
    audit = out / "audit.jsonl"
    verify_chain(audit)
    events = AuditLog(audit).read()
    kinds = [e["event"] for e in events]
    assert kinds.count("site_registered") == 2 and "superlink_started" in kinds
    submitted = next(e for e in events if e["event"] == "run_submitted")
    assert submitted["signed_by"] == "fedprostate-consortium" and submitted["by"]
    assert submitted["app"].startswith("@fedprostate/fedprostate==")
    per_round = [e for e in events if e["event"] == "round"]
    assert [e["round"] for e in per_round] == [1, 2]
    assert all(sorted(r["site"] for r in e["replied"]) == ["siteA", "siteB"] for e in per_round)
    assert all(r["bytes_up"] > 0 for e in per_round for r in e["replied"])
    # ... and at each site: what left it.
    site_log = dep / "nodes" / "siteA" / "state" / "siteA" / "audit.jsonl"
    verify_chain(site_log)
    sent = [e for e in AuditLog(site_log).read() if e["event"] == "reply_sent"]
    assert [e["round"] for e in sent] == [1, 2]
    up = {c["bytes_up"] for r in trained for c in r["clients"] if c["site"] == "siteA"}
    assert {e["bytes"] for e in sent} == up and all(e["tensors"] and e["metrics"] for e in sent)

    # The same configuration in Flower's simulation gives the same model.
    cfg = tiny_config(cache, **SETTINGS)
    federate(cfg, tmp_path / "simulated")
    last = "checkpoints/round_0002.safetensors"
    deployed = load_file(str(out / last))
    simulated = load_file(str(tmp_path / "simulated" / last))
    assert set(deployed) == set(simulated)
    for name in deployed:
        np.testing.assert_allclose(deployed[name], simulated[name], rtol=1e-5, atol=1e-6)
    assert max(float(np.abs(v).max()) for v in deployed.values()) > 0

    # Finding 5: resuming a finished run is a no-op that says so.
    summary = (out / "summary.json").read_bytes()
    again = runner.invoke(app, [*_args(cache, out, 2, 2), "--resume"], catch_exceptions=False)
    assert again.exit_code == 0 and "already finished 2 rounds: nothing to do" in again.output
    assert (out / "summary.json").read_bytes() == summary
    # Finding 4: a changed configuration is refused with the diff ...
    changed = runner.invoke(app, [*_args(cache, out, 2, 3), "--resume"], catch_exceptions=False)
    assert changed.exit_code == 2 and "fl.rounds: 2 -> 3" in changed.output
    # ... and with --force the deployment resumes (it failed with "Public key already in use").
    forced = runner.invoke(
        app, [*_args(cache, out, 2, 3), "--resume", "--force"], catch_exceptions=False
    )
    assert forced.exit_code == 0, forced.output
    assert [r["round"] for r in _rounds(out)] == [0, 1, 2, 3]
    events = AuditLog(audit).read()
    assert [e["event"] for e in events].count("site_registered") == 2  # not registered twice
    assert any(e["event"] == "resume_forced" for e in events)
    verify_chain(audit)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusals")
    cache = write_tiny_cache(root / "cache", sites=("siteA",), patients_per_site=6)
    dep = LocalDeployment(root / "deployment", echo=lambda line: None)
    try:
        dep.start()
        dep.register("siteA", train=6, val=2)
        yield dep, cache
    finally:
        dep.close()


def test_refused_connections(deployment, tmp_path):
    dep, cache = deployment
    rogue = make_node_keys(tmp_path / "rogue", "rogue")
    other_ca = make_server_certificates(tmp_path / "other_ca")
    registered_key = dep.node_keys("siteA").private_key

    def refused(name: str, **kwargs):
        return dep.start_supernode(name, cache, max_wait_time=8, **kwargs)

    procs = {
        "unregistered": refused("unregistered", private_key=rogue.private_key),
        "plaintext": refused("plaintext", insecure=True, authenticate=False),
        "plaintext_key": refused("plaintext_key", insecure=True, private_key=registered_key),
        "wrong_ca": refused(
            "wrong_ca", private_key=registered_key, root_certificates=other_ca.ca_cert
        ),
        "no_key": refused("no_key", authenticate=False),
    }
    codes = {name: proc.wait_exit(90) for name, proc in procs.items()}
    logs = {name: proc.log_text() for name, proc in procs.items()}
    for name, code in codes.items():
        assert code not in (None, 0), (name, logs[name][-1500:])
        assert "SuperNode ID:" not in logs[name], name
    assert "Failed to activate SuperNode" in logs["unregistered"]
    assert "CERTIFICATE_VERIFY_FAILED" in logs["wrong_ca"]
    assert "requires a secure TLS connection" in logs["plaintext_key"]
    assert "Activated node_id" not in dep.superlink.log_text()
    # The registered key over TLS with the right CA is let in (the refusals were not an accident).
    dep.start_supernode("siteA", cache)
    dep.wait_connected("siteA")
    assert "Activated node_id" in dep.superlink.log_text()


def _outsider(dep: LocalDeployment, tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    """`flwr ARGS` as someone who has only ca.pem and the public address."""
    home = tmp_path / "outsider"
    home.mkdir(exist_ok=True)
    doc = {
        "superlink": {
            "default": "public",
            "public": {"address": dep.public_address, "root-certificates": str(dep.certs.ca_cert)},
        }
    }
    (home / "config.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")
    env = dep.env(home)
    return subprocess.run(
        [flower_bin("flwr"), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    )


def test_an_outsider_cannot_register_run_stop_or_unregister_at_the_public_address(
    deployment, tmp_path
):
    """Finding 1: anyone who could reach the SuperLink's port could act as coordinator."""
    dep, _ = deployment
    site_a = json.loads(dep.sites_file.read_text(encoding="utf-8"))["nodes"]
    node_id = next(iter(site_a))
    key = make_node_keys(tmp_path / "keys", "outsider")
    attempts = {
        "register": ["supernode", "register", str(key.public_key), "public"],
        "run": ["run", str(dep.app()), "public"],
        "stop": ["stop", "1", "public"],
        "unregister": ["supernode", "unregister", node_id, "public"],
        "list": ["supernode", "list", "public"],
    }
    for what, args in attempts.items():
        done = _outsider(dep, tmp_path, args)
        assert done.returncode != 0, (what, done.stdout, done.stderr)
    access = dep.proxy.log_lines()
    control = [line for line in access if "/v1/control/" in line]
    assert control and all('" 404 ' in line for line in control)
    # The Fleet API's own register/unregister, the Runtime API and the docs are closed too.
    base = f"https://{dep.public_address}"
    for path in ("/v1/fleet/register-node", "/v1/fleet/unregister-node", "/v1/runtime/get-nodes"):
        response = requests.post(base + path, data=b"", verify=dep.certs.ca_cert, timeout=10)
        assert response.status_code == 404, path
    assert requests.get(base + "/docs", verify=dep.certs.ca_cert, timeout=10).status_code == 404
    # A Fleet call without Flower's node-auth headers does not even reach the SuperLink.
    response = requests.post(
        base + "/v1/fleet/pull-messages", data=b"", verify=dep.certs.ca_cert, timeout=10
    )
    assert response.status_code == 401
    link_log = dep.superlink.log_text()
    assert "ControlServicer.StartRun" not in link_log
    # The coordinator, on loopback, still sees siteA registered (the unregister did not happen).
    assert node_id in dep.flwr(["supernode", "list", "fedprostate", "--format", "json"])


def test_the_coordinator_registers_a_hospital_from_the_command_line(
    deployment, tmp_path, monkeypatch
):
    """`fedprostate coordinator register`: Flower registration + registry entry + audit line."""
    dep, _ = deployment
    key = make_node_keys(tmp_path / "keys", "siteZ")
    for name, value in dep.env().items():
        monkeypatch.setenv(name, value)
    registry, audit = tmp_path / "sites.json", tmp_path / "audit.jsonl"
    args = ["coordinator", "register", "--key", str(key.public_key), "--site", "siteZ"]
    args += ["--train", "30", "--val", "10", "--registry", str(registry), "--audit", str(audit)]
    result = CliRunner().invoke(app, [*args, "--connection", "fedprostate"])
    assert result.exit_code == 0, result.output
    [(node, entry)] = json.loads(registry.read_text(encoding="utf-8"))["nodes"].items()
    assert entry["site"] == "siteZ" and entry["train"] == 30 and entry["val"] == 10
    assert node in dep.flwr(["supernode", "list", "fedprostate", "--format", "json"])
    [event] = AuditLog(audit).read()
    assert event["event"] == "site_registered" and str(event["node_id"]) == node
    again = CliRunner().invoke(app, [*args, "--connection", "fedprostate"])
    assert again.exit_code == 0 and len(AuditLog(audit).read()) == 1  # once only


def test_an_unsigned_app_never_starts_at_a_site(deployment, tmp_path):
    """Finding 1: SuperNodes ran whatever app the SuperLink handed them."""
    dep, cache = deployment
    if "siteA" not in dep.supernodes or not dep.supernodes["siteA"].running():
        dep.start_supernode("siteA", cache)
        dep.wait_connected("siteA")
    cfg = deployment_config(
        tiny_config(cache, **{**SETTINGS, "fl.rounds": 1, "fl.round_timeout": 120.0}),
        tmp_path / "unsigned",
        n_sites=1,
        sites_file=dep.sites_file,
    )
    summary = dep.run(cfg, timeout=600, signed=False)  # `flwr run APP_DIR`: an unsigned upload
    assert summary["status"] == "failed", summary
    node_log = dep.supernodes["siteA"].log_text()
    assert "The FAB could not be verified" in node_log
    # The app never ran at the site: nothing left it (its audit log has no reply).
    assert not (dep.root / "nodes" / "siteA" / "state" / "siteA" / "audit.jsonl").exists()


def test_an_app_signed_with_another_key_is_refused_and_the_command_fails(tmp_path):
    """Finding 1 (re-signed app) and finding 4 (a run that aggregated nothing exited 0)."""
    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA",), patients_per_site=6)
    intruder, _ = make_signing_key(tmp_path, "intruder")
    out = tmp_path / "run"
    args = [*_args(cache, out, 1, 1, **{"fl.round_timeout": 120.0}), "--signing-key", str(intruder)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "no update was aggregated" in result.output
    node_log = (out / "deployment" / "logs" / "supernode_siteA.log").read_text("utf-8")
    assert "FAB verification failed" in node_log
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["status"] == "failed"
