"""Sites choose what runs: the consortium signs the app, every SuperNode checks the signature.

Flower 1.42's own mechanism is used unchanged at the sites: ``flower-supernode --trusted-entities
FILE`` makes a SuperNode verify, for every new run, that the app bundle (FAB) it receives carries
an Ed25519 signature over ``signed_at (8 bytes, big-endian) + SHA-256(FAB)`` by one of the keys in
FILE; otherwise it answers the run's messages with an error and never starts the app
(``supernode/start_client_internal.py::_verify_fab``). Flower fills those signatures in only for
apps fetched from an app registry speaking the Flower Hub protocol (``POST {FLWR_SUPERGRID_API_URL}
/hub/fetch-fab`` answering ``{fab_url, verifications}``); an app uploaded with ``flwr run DIR``
arrives unsigned and is refused.

Flower Hub (api.flower.ai) cannot be used offline, so the consortium runs its own registry that
speaks that protocol: :class:`AppRegistry` (stdlib HTTP, loopback next to the SuperLink, started
with ``FLWR_SUPERGRID_API_URL`` pointing at it). The registry is *not* trusted: it only hands out
the FAB bytes and the consortium's signatures; a registry (or coordinator) that changes one byte
of the app, or signs it with any key but the consortium's, is refused by every SuperNode.

- :func:`sign_app`: build the FAB exactly as ``flwr run`` would (``flwr.cli.build``) and sign it
  with the consortium's OpenSSH Ed25519 key (``ssh-keygen -t ed25519``), Flower's own message
  format and signing function; the signed app is stored as ``<dir>/<publisher>.<name>/<version>
  .{fab,json}``.
- :func:`write_trusted_entities`: the YAML every SuperNode is started with.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import tomllib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.primitives.asymmetric_ed25519 import (
    create_message_to_sign,
    load_private_key,
    sign_message,
)

from fedprostate.fl.deploy.certs import write_openssh_pair

DEFAULT_KEY_ID = "fedprostate-consortium"


class SigningError(ValueError):
    """A key or app that cannot be used for signing (the message names the file)."""


@dataclass(frozen=True)
class SignedApp:
    spec: str  # what `flwr run` is given: @publisher/name==version
    fab_sha256: str
    key_id: str
    fab: Path
    signature: Path


def make_signing_key(out_dir: str | Path, name: str = "consortium_app_key") -> tuple[Path, Path]:
    """An OpenSSH Ed25519 key pair, as ``ssh-keygen -t ed25519 -N "" -f NAME`` makes it."""
    return write_openssh_pair(ed25519.Ed25519PrivateKey.generate(), Path(out_dir), name)


def app_identity(app_dir: str | Path) -> tuple[str, str, str]:
    """(publisher, name, version) of a Flower app folder's pyproject.toml."""
    doc = tomllib.loads((Path(app_dir) / "pyproject.toml").read_text(encoding="utf-8"))
    return (
        str(doc["tool"]["flwr"]["app"]["publisher"]),
        str(doc["project"]["name"]),
        str(doc["project"]["version"]),
    )


def sign_app(
    app_dir: str | Path, private_key: str | Path, out_dir: str | Path, key_id: str = DEFAULT_KEY_ID
) -> SignedApp:
    """Build the app's FAB and store it with the consortium's signature in ``out_dir``."""
    try:
        key = load_private_key(Path(private_key))
    except (ValueError, OSError) as exc:
        raise SigningError(f"{private_key}: not an OpenSSH Ed25519 private key ({exc})") from None
    fab = build_fab_from_disk(Path(app_dir))
    signed_at = int(time.time())
    digest = hashlib.sha256(fab).digest()
    signature = sign_message(key, create_message_to_sign(digest, signed_at))
    publisher, name, version = app_identity(app_dir)
    folder = Path(out_dir) / f"{publisher}.{name}"
    folder.mkdir(parents=True, exist_ok=True)
    fab_path, sig_path = folder / f"{version}.fab", folder / f"{version}.json"
    fab_path.write_bytes(fab)
    record = {
        "public_key_id": key_id,
        "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii"),
        "signed_at": signed_at,
        "fab_sha256": digest.hex(),
    }
    sig_path.write_text(json.dumps({"verifications": [record]}, indent=2) + "\n", encoding="utf-8")
    return SignedApp(f"@{publisher}/{name}=={version}", digest.hex(), key_id, fab_path, sig_path)


def write_trusted_entities(path: str | Path, public_keys: dict[str, str | Path]) -> Path:
    """The ``--trusted-entities`` YAML: key id → OpenSSH Ed25519 public key text."""
    lines = []
    for key_id, public in public_keys.items():
        text = Path(public).read_text(encoding="utf-8").split()
        if not text or text[0] != "ssh-ed25519":
            raise SigningError(f"{public}: not an OpenSSH Ed25519 public key")
        lines.append(f"{json.dumps(key_id)}: {json.dumps(' '.join(text[:2]))}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class AppRegistry:
    """A Flower-Hub-protocol app registry over a folder of signed apps, on one loopback port.

    ``POST /v1/hub/fetch-fab`` with ``{"app_id": "@publisher/name", "app_version": "x.y.z"}``
    answers ``{"fab_url", "verifications"}`` (404 for an unknown app); ``GET /fabs/...`` serves
    the FAB bytes. It is started in a thread of the coordinator's process.
    """

    def __init__(self, store: str | Path, host: str = "127.0.0.1", port: int = 0):
        self.store = Path(store)
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                return

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/hub/fetch-fab":
                    self._send(404, b'{"detail": "not found"}', "application/json")
                    return
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    request = json.loads(self.rfile.read(length) or b"{}")
                    found = registry.lookup(request["app_id"], request.get("app_version"))
                except (ValueError, KeyError, TypeError):
                    found = None
                if found is None:
                    self._send(404, b'{"detail": "app not found"}', "application/json")
                    return
                fab, sig = found
                body = {
                    "fab_url": f"{registry.url}/fabs/{fab.parent.name}/{fab.name}",
                    "verifications": json.loads(sig.read_text(encoding="utf-8"))["verifications"],
                }
                self._send(200, json.dumps(body).encode(), "application/json")

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[0] == "fabs" and ".." not in parts:
                    path = registry.store / parts[1] / parts[2]
                    if path.suffix == ".fab" and path.is_file():
                        self._send(200, path.read_bytes(), "application/octet-stream")
                        return
                self._send(404, b"not found", "text/plain")

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.host, self.port = host, int(self.server.server_address[1])
        self.url = f"http://{self.host}:{self.port}"
        self.api_url = f"{self.url}/v1"  # FLWR_SUPERGRID_API_URL of the SuperLink
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def lookup(self, app_id: str, version: str | None) -> tuple[Path, Path] | None:
        folder = self.store / app_id.lstrip("@").replace("/", ".")
        if not folder.is_dir():
            return None
        versions = sorted(p.stem for p in folder.glob("*.fab"))
        chosen = version if version in versions else (None if version else (versions or [None])[-1])
        if chosen is None:
            return None
        fab, sig = folder / f"{chosen}.fab", folder / f"{chosen}.json"
        return (fab, sig) if sig.is_file() else None

    def start(self) -> AppRegistry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> AppRegistry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
