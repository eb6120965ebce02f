"""Certificates, node keys, the Flower app metadata and `site preflight` (fast, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key
from typer.testing import CliRunner

from fedprostate.cli import app
from fedprostate.fl.deploy.certs import (
    KeyFileError,
    certificate_expiry,
    make_node_keys,
    make_server_certificates,
    renew_server_certificate,
)
from fedprostate.fl.deploy.deployment import node_config_text

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_certificate_is_signed_by_the_ca_for_loopback(tmp_path):
    certs = make_server_certificates(tmp_path)
    ca, server = _load(certs.ca_cert), _load(certs.server_cert)
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certs.server_key.stat().st_mode & 0o077 == 0  # private keys: owner only
    assert certs.ca_key.stat().st_mode & 0o077 == 0
    other = make_server_certificates(tmp_path / "other")
    with pytest.raises(Exception):  # noqa: B017 - any verification failure
        server.verify_directly_issued_by(_load(other.ca_cert))


def test_renewal_keeps_the_ca_and_replaces_the_server_certificate(tmp_path):
    certs = make_server_certificates(tmp_path, days=1)
    old = _load(certs.server_cert)
    old_key = certs.server_key.read_bytes()
    renewed = renew_server_certificate(certs, days=400)
    new = _load(renewed.server_cert)
    assert renewed.ca_cert == certs.ca_cert
    new.verify_directly_issued_by(_load(certs.ca_cert))  # SuperNodes need no change
    assert new.serial_number != old.serial_number
    assert renewed.server_key.read_bytes() != old_key
    assert certificate_expiry(renewed.server_cert) > certificate_expiry(certs.ca_cert).replace(
        year=2000
    )
    assert (
        certificate_expiry(renewed.server_cert) - certificate_expiry(certs.server_cert)
    ).days < 1
    assert (new.not_valid_after_utc - old.not_valid_after_utc).days >= 398


def test_node_keys_load_as_flower_loads_them(tmp_path):
    keys = make_node_keys(tmp_path, "siteA")
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)  # flower-supernode
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    public = try_load_public_key(keys.public_key)  # flwr supernode register
    assert isinstance(public, bytes) and len(public) > 0
    assert keys.public_key.read_text(encoding="utf-8").startswith("ecdsa-sha2-nistp384 ")
    assert keys.private_key.stat().st_mode & 0o077 == 0


def test_node_config_text_is_what_flower_parses():
    from flwr.common.config import parse_config_args

    values = {"site": "site A", "cache": "/data/x y/cache", "state-dir": "/s", "threads": 2}
    assert parse_config_args([node_config_text(values)]) == values


def _foundation(tmp_path: Path) -> tuple[Path, str]:
    from fedprostate.models.backbones import create_backbone
    from fedprostate.models.foundation import save_checkpoint

    model = create_backbone("swin_test", crop=32)
    path = tmp_path / "foundation.safetensors"
    meta = save_checkpoint(path, model, {"arch": "swin_test", "crop": 32, "normalization": "z"})
    return path, meta["sha256"]


def test_site_preflight_checks_data_and_hash_and_prints_the_command(tmp_path):
    from fl_fixtures import write_tiny_cache

    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA",))
    (cache / "rejected.csv").write_text(
        "path,patient_id,study_id,reason\n/x/p9.mha,p9,s9,ADC missing\n", encoding="utf-8"
    )
    ckpt, sha = _foundation(tmp_path)
    runner = CliRunner()
    args = ["site", "preflight", "--data", str(cache), "--foundation", str(ckpt)]
    ok = runner.invoke(app, [*args, "--expected-sha256", sha, "--superlink", "10.0.0.1:8000"])
    assert ok.exit_code == 0, ok.output
    assert (
        "site siteA:" in ok.output
        and "train 12" in ok.output
        and "val 4" in ok.output
        and "test 8" in ok.output
    )
    assert "rejected studies: 1" in ok.output and "ADC missing" in ok.output
    assert "matches the consortium's expected SHA-256 (backbone hash)" in ok.output
    assert "backbone sha256 (of the loaded weights; what the server checks)" in ok.output
    command = next(line for line in ok.output.splitlines() if "flower-supernode" in line)
    assert "--root-certificates ca.pem" in command
    assert "--auth-supernode-private-key supernode_key" in command
    assert 'site="siteA"' in command and str(cache.resolve()) in command
    bad = runner.invoke(app, [*args, "--expected-sha256", "0" * 64])
    assert bad.exit_code == 1
    assert "is the consortium's" in bad.output


def test_private_keys_are_owner_only_even_if_the_file_existed(tmp_path):
    """Finding 6: private-key files kept an older 0644 mode."""
    (tmp_path / "server").mkdir()
    (tmp_path / "keys").mkdir()
    for path in (tmp_path / "server" / "server.key", tmp_path / "keys" / "siteA"):
        path.write_text("old", encoding="utf-8")
        path.chmod(0o644)
    certs = make_server_certificates(tmp_path)
    keys = make_node_keys(tmp_path / "keys", "siteA")
    for path in (certs.server_key, certs.ca_key, keys.private_key):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert b"PRIVATE KEY" in certs.server_key.read_bytes()


def test_private_keys_are_never_written_through_a_symlink(tmp_path):
    """Finding 6: private-key files followed symlinks."""
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch", encoding="utf-8")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "siteA").symlink_to(victim)
    with pytest.raises(KeyFileError, match="symlink"):
        make_node_keys(tmp_path / "keys", "siteA")
    assert victim.read_text(encoding="utf-8") == "do not touch"


def test_the_ca_key_is_not_beside_the_server_key_and_survives_restarts(tmp_path):
    """Finding 6: ca.key was written beside server.key and deploy-local made a new CA per start."""
    first = make_server_certificates(tmp_path)
    assert first.ca_key.parent != first.server_key.parent
    assert not (first.server_key.parent / "ca.key").exists()
    ca, ca_key = first.ca_cert.read_bytes(), first.ca_key.read_bytes()
    again = make_server_certificates(tmp_path)  # a restart
    assert again.ca_cert.read_bytes() == ca and again.ca_key.read_bytes() == ca_key
    _load(again.server_cert).verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    from fedprostate.fl.deploy.deployment import LocalDeployment

    one = LocalDeployment(tmp_path / "dep", echo=lambda line: None)
    ca, signing = one.certs.ca_cert.read_bytes(), one.signing_key.read_bytes()
    two = LocalDeployment(tmp_path / "dep", echo=lambda line: None)
    assert two.certs.ca_cert.read_bytes() == ca
    assert two.signing_key.read_bytes() == signing  # the consortium key too


def test_preflight_never_trusts_the_hash_a_checkpoint_states_about_itself(tmp_path):
    """Finding 6: `site preflight` accepted the checkpoint's own stated hash (a 3-zero file
    "matched")."""
    ckpt = tmp_path / "fake.safetensors"
    ckpt.write_bytes(b"000")
    ckpt.with_suffix(".json").write_text('{"sha256": "' + "0" * 64 + '"}', encoding="utf-8")
    from fl_fixtures import write_tiny_cache

    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA",))
    args = ["site", "preflight", "--data", str(cache), "--foundation", str(ckpt)]
    bad = CliRunner().invoke(app, [*args, "--expected-sha256", "0" * 64])
    assert bad.exit_code == 1, bad.output
    assert "matches" not in bad.output
    import hashlib

    real = hashlib.sha256(b"000").hexdigest()
    assert f"{real}  {ckpt}" in bad.output  # sha256sum format
    ok = CliRunner().invoke(app, [*args, "--expected-sha256", real])
    assert (
        ok.exit_code == 0 and "matches the consortium's expected SHA-256 (file hash)" in ok.output
    )
