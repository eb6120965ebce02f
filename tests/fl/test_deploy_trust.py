"""Who may act and what code runs (fast checks, no Flower processes): the consortium's app
signature as Flower's own SuperNode code verifies it, the Hub-protocol app registry, the nginx
front's route list, and the deployment's run config."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest
import requests
from flwr.supercore.fab import Fab
from flwr.supercore.utils import request_download_link
from flwr.superlink.servicer.control.control_handlers import _format_verification
from flwr.supernode.cli.flower_supernode import (
    _try_obtain_trusted_entities,
    _validate_public_keys_ed25519,
)
from flwr.supernode.start_client_internal import _verify_fab

from fedprostate.config import RunConfig
from fedprostate.fl.deploy.app import app_dir, deployment_config
from fedprostate.fl.deploy.proxy import FLEET_ROUTES, nginx_config
from fedprostate.fl.deploy.signing import (
    DEFAULT_KEY_ID,
    AppRegistry,
    make_signing_key,
    sign_app,
    write_trusted_entities,
)


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    root = tmp_path_factory.mktemp("signing")
    key, pub = make_signing_key(root, "consortium")
    other, _ = make_signing_key(root, "intruder")
    app = sign_app(app_dir(), key, root / "store")
    trusted = write_trusted_entities(root / "trusted_entities.yaml", {DEFAULT_KEY_ID: pub})
    return root, app, other, trusted


def _as_the_superlink_stores_it(fab: bytes, verifications: list[dict]) -> Fab:
    """What the SuperLink hands a SuperNode for a registry app (control_handlers.start_run)."""
    return Fab(hashlib.sha256(fab).hexdigest(), fab, _format_verification(verifications))


def test_flowers_own_verifier_accepts_only_the_consortium_signature(signed):
    root, app, other, trusted_path = signed
    trusted = _try_obtain_trusted_entities(trusted_path)  # what --trusted-entities loads
    _validate_public_keys_ed25519(trusted)
    fab = app.fab.read_bytes()
    verifications = json.loads(app.signature.read_text(encoding="utf-8"))["verifications"]
    assert _verify_fab(_as_the_superlink_stores_it(fab, verifications), trusted)
    # One byte of the app changed after signing (a compromised coordinator or registry).
    tampered = bytearray(fab)
    tampered[len(tampered) // 2] ^= 1
    assert not _verify_fab(_as_the_superlink_stores_it(bytes(tampered), verifications), trusted)
    # The same app re-signed with another key under the consortium's key id.
    resigned = sign_app(app_dir(), other, root / "resigned")
    forged = json.loads(resigned.signature.read_text(encoding="utf-8"))["verifications"]
    assert not _verify_fab(_as_the_superlink_stores_it(fab, forged), trusted)
    # An unsigned upload (`flwr run DIR`) carries no verification at all: refused before this.
    assert not Fab("x", fab, {}).verifications.get("valid_license", "")


def test_the_app_registry_speaks_flowers_hub_protocol(signed):
    root, app, _, _ = signed
    with AppRegistry(root / "store") as registry:
        url, verifications, _ = request_download_link(
            "@fedprostate/fedprostate",
            app.spec.split("==")[1],
            f"{registry.api_url}/hub/fetch-fab",
            "fab_url",
        )
        assert requests.get(url, timeout=10).content == app.fab.read_bytes()
        assert verifications[0]["public_key_id"] == DEFAULT_KEY_ID
        with pytest.raises(ValueError, match="not found"):
            request_download_link("@evil/app", "1.0.0", f"{registry.api_url}/hub/fetch-fab", "u")
        assert requests.get(f"{registry.url}/fabs/../../etc/passwd", timeout=10).status_code == 404


def test_the_front_forwards_exactly_the_fleet_routes_a_supernode_needs(tmp_path):
    from flwr.superlink.routers.fleet.router import router

    fleet = {r.path.removeprefix("/v1/fleet/") for r in router.routes}
    assert set(FLEET_ROUTES) == fleet - {"register-node", "unregister-node"}
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.skip("nginx not installed (.ci/run installs it)")
    from fedprostate.fl.deploy.certs import make_server_certificates

    certs = make_server_certificates(tmp_path / "certs")
    for sub in ("logs", "tmp"):
        (tmp_path / sub).mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        nginx_config(
            tmp_path,
            "127.0.0.1:1",
            "127.0.0.1:2",
            certs.server_cert,
            certs.server_key,
            certs.ca_cert,
        )
    )
    check = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    assert check.returncode == 0, check.stderr
    assert "/v1/control" not in conf.read_text(
        encoding="utf-8"
    ) and "register-node" not in conf.read_text(encoding="utf-8")


def test_the_deployment_never_forces_min_nodes_to_the_site_count(tmp_path):
    """Finding 4: min_available_nodes = number of sites let one dead node stall the run."""
    cfg = RunConfig.from_flat({"fl.min_available_nodes": 2, "fl.min_train_nodes": 2})
    run_cfg = deployment_config(cfg, tmp_path / "run", n_sites=3, sites_file=tmp_path / "s.json")
    assert run_cfg.fl.min_available_nodes == 2
    assert run_cfg.fl.sites == str((tmp_path / "s.json").resolve())
    assert deployment_config(cfg, tmp_path, n_sites=1).fl.min_available_nodes == 1
