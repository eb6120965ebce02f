"""Certificates and SuperNode keys for a Flower deployment, made with ``cryptography``.

- A consortium **CA** (self-signed, kept by the coordinator) signs the SuperLink's **server
  certificate** (SAN ``IP:127.0.0.1`` and ``DNS:localhost`` by default, plus whatever names the
  SuperLink is reached by). Hospitals trust only the CA certificate (``--root-certificates``).
- Each hospital makes its own **SuperNode key pair** (ECDSA P-384, OpenSSH format: what
  ``flower-supernode --auth-supernode-private-key`` loads and ``flwr supernode register`` reads;
  the same as ``ssh-keygen -t ecdsa -b 384``). Only the public key leaves the hospital.
- **Renewal**: :func:`renew_server_certificate` issues a fresh server certificate (new key, new
  validity window) from the same CA; hospitals change nothing because they trust the CA, and the
  SuperLink is restarted with the new files.
- The **CA key never lies beside the server key**: :func:`make_server_certificates` keeps the CA in
  ``<dir>/ca/`` and the server's files in ``<dir>/server/`` (in production the CA folder lives on
  an offline machine), and reuses an existing CA, so a restart never changes what hospitals trust.
- **Private keys** are written owner-only (0600) into a fresh file that replaces the old one, so a
  pre-existing file's looser mode never survives; a symlink where a key should go is refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServerCertificates:
    ca_cert: Path  # trusted by every SuperNode and by `flwr` (root-certificates)
    ca_key: Path  # stays with the coordinator; needed only to issue/renew server certificates
    server_cert: Path  # --ssl-certfile of flower-superlink
    server_key: Path  # --ssl-keyfile of flower-superlink


@dataclass(frozen=True)
class NodeKeys:
    private_key: Path  # stays at the hospital: flower-supernode --auth-supernode-private-key
    public_key: Path  # sent to the coordinator: flwr supernode register PUBLIC_KEY


class KeyFileError(ValueError):
    """A private key file that cannot be written safely (the message names it)."""


def write_private(path: Path, data: bytes) -> None:
    """Write a secret owner-only (0600) from its first byte, never through a symlink.

    The bytes go to a new temporary file (``O_EXCL | O_NOFOLLOW``, mode 0600) that then replaces
    ``path``: an existing file's mode or owner never carries over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        raise KeyFileError(f"{path}: is a symlink; refusing to write a private key through it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedprostate consortium"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: tuple[str, ...] | list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca(
    out_dir: str | Path, days: int = 3650, name: str = "fedprostate CA"
) -> tuple[Path, Path]:
    """A self-signed CA: returns (ca.pem, ca.key)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    ca_cert, ca_key = out / "ca.pem", out / "ca.key"
    ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(ca_key, _pem_key(key))
    return ca_cert, ca_key


def issue_server_certificate(
    ca_cert: str | Path,
    ca_key: str | Path,
    out_dir: str | Path,
    hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS,
    days: int = 365,
) -> tuple[Path, Path]:
    """A server certificate signed by the CA for ``hosts`` (SAN): returns (server.pem, server.key)."""
    ca = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
    ca_private = serialization.load_pem_private_key(Path(ca_key).read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False
        )
        .sign(ca_private, hashes.SHA384())
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    server_cert, server_key = out / "server.pem", out / "server.key"
    server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(server_key, _pem_key(key))
    return server_cert, server_key


def make_server_certificates(
    out_dir: str | Path, hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS, days: int = 365
) -> ServerCertificates:
    """The CA in ``out_dir/ca/`` (made once, then reused) and a fresh server certificate and key
    from it in ``out_dir/server/`` (with a copy of ``ca.pem``, what hospitals receive)."""
    out = Path(out_dir)
    ca_dir, server_dir = out / "ca", out / "server"
    ca_cert, ca_key = ca_dir / "ca.pem", ca_dir / "ca.key"
    if not (ca_cert.is_file() and ca_key.is_file()):
        ca_cert, ca_key = make_ca(ca_dir)
    server_cert, server_key = issue_server_certificate(ca_cert, ca_key, server_dir, hosts, days)
    shared = server_dir / "ca.pem"
    shared.write_bytes(ca_cert.read_bytes())
    return ServerCertificates(shared, ca_key, server_cert, server_key)


def renew_server_certificate(
    certs: ServerCertificates, hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS, days: int = 365
) -> ServerCertificates:
    """Replace the server certificate and key with fresh ones from the same CA.

    SuperNodes keep trusting the CA, so nothing changes at the hospitals; restart the SuperLink
    with the new files (or rely on its restart after maintenance) before the old one expires.
    """
    out = certs.server_cert.parent
    server_cert, server_key = issue_server_certificate(
        certs.ca_cert, certs.ca_key, out, hosts, days
    )
    return ServerCertificates(certs.ca_cert, certs.ca_key, server_cert, server_key)


def certificate_expiry(cert_path: str | Path) -> dt.datetime:
    """When a PEM certificate stops being valid (UTC): for renewal monitoring."""
    return x509.load_pem_x509_certificate(Path(cert_path).read_bytes()).not_valid_after_utc


def make_node_keys(out_dir: str | Path, name: str) -> NodeKeys:
    """An ECDSA P-384 key pair in OpenSSH format (as ``ssh-keygen -t ecdsa -b 384``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private, public = write_openssh_pair(ec.generate_private_key(ec.SECP384R1()), out, name)
    return NodeKeys(private, public)


def write_openssh_pair(key, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write ``key`` as OpenSSH files ``NAME`` (private, 0600) and ``NAME.pub`` (commented
    with ``name``), as ``ssh-keygen`` does; returns (private, public)."""
    private, public = out_dir / name, out_dir / f"{name}.pub"
    write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" {name}\n".encode()
    )
    return private, public
