"""The coordinator's public front: nginx forwarding only the Fleet API routes a SuperNode uses.

Flower 1.42 serves the Fleet, Control and Runtime APIs on one HTTP port, and without Enterprise
OIDC the Control API (``flwr run``, ``stop``, ``supernode register/unregister``) accepts anyone
who reaches it. So the SuperLink listens on loopback only and hospitals reach it through nginx,
which:

- terminates TLS with the SuperLink's certificate (hospitals keep trusting only the consortium
  CA) and forwards over TLS to the SuperLink, verifying its certificate against the CA;
- forwards ``POST /v1/fleet/<route>`` for exactly the routes an authenticated SuperNode calls
  (:data:`FLEET_ROUTES`), and only requests carrying Flower's node-auth headers (the SuperLink
  then verifies the signature against the registered keys);
- answers everything else 404 (these routes do not exist for the outside): the whole Control API
  (``/v1/control/*``), the Runtime API (``/v1/runtime/*``), ``/docs``, and the Fleet API's
  self-service ``register-node`` and ``unregister-node`` (registration is the coordinator's,
  through the Control API on loopback); a Fleet call without node-auth headers gets 401.
  (Not 403: Flower's HTTP clients read 403 as "run not running" and keep going.)

Only nginx's port is opened in the coordinator's firewall. nginx is well-kept infrastructure
(Debian ``nginx`` 1.22 here); :func:`nginx_config` is the whole configuration.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from fedprostate.fl.deploy.processes import LOOPBACK, ManagedProcess, port_open

# Every Fleet route an authenticated SuperNode calls (flwr/supernode/fleet_http_connection.py).
FLEET_ROUTES = (
    "activate-node",
    "deactivate-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
)


class ProxyUnavailableError(RuntimeError):
    """nginx is not installed or refused its configuration (the message says what to do)."""


def nginx_bin() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    raise ProxyUnavailableError(
        "nginx not found: install it (Debian/Ubuntu: apt-get install -y nginx); the coordinator "
        "exposes only the Fleet API through it"
    )


def nginx_config(
    prefix: Path,
    listen: str,
    upstream: str,
    certfile: Path,
    keyfile: Path,
    ca_file: Path,
    max_body: str = "256m",
) -> str:
    """The complete nginx configuration of the public front (foreground, no root paths)."""
    routes = "|".join(FLEET_ROUTES)
    return f"""# fedprostate: the coordinator's public front. Only Fleet API routes pass.
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format fleet '$remote_addr "$request" $status $body_bytes_sent "$http_flwr_public_key"';
    access_log {prefix}/logs/access.log fleet;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server_tokens off;
    client_max_body_size {max_body};
    proxy_request_buffering off;   # stream bodies: no temporary files
    proxy_buffering off;
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;

    server {{
        listen {listen} ssl;
        ssl_certificate {certfile};
        ssl_certificate_key {keyfile};
        ssl_protocols TLSv1.2 TLSv1.3;

        location ~ ^/v1/fleet/({routes})$ {{
            limit_except POST {{ deny all; }}
            if ($http_flwr_public_key = "") {{ return 401; }}   # Flower node auth required
            if ($http_flwr_signature = "") {{ return 401; }}
            proxy_pass https://{upstream};
            proxy_http_version 1.1;
            proxy_ssl_trusted_certificate {ca_file};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;   # nginx checks DNS names only (the cert has DNS:localhost)
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
        location / {{ return 404; }}   # Control, Runtime, docs, self-registration
    }}
}}
"""


class FleetProxy:
    """nginx in front of a loopback SuperLink, as a managed foreground process."""

    def __init__(
        self,
        root: Path,
        listen_host: str,
        listen_port: int,
        superlink_port: int,
        certfile: Path,
        keyfile: Path,
        ca_file: Path,
    ) -> None:
        self.prefix = Path(root).resolve()
        self.listen_host, self.listen_port = listen_host, listen_port
        for sub in ("logs", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(
            nginx_config(
                self.prefix,
                f"{listen_host}:{listen_port}",
                f"{LOOPBACK}:{superlink_port}",
                certfile,
                keyfile,
                ca_file,
            ),
            encoding="utf-8",
        )
        self.access_log = self.prefix / "logs" / "access.log"
        self.process: ManagedProcess | None = None

    def command(self) -> list[str]:
        return [nginx_bin(), "-p", str(self.prefix), "-c", str(self.conf), "-e", "stderr"]

    def start(self, env: dict[str, str], timeout: float = 30.0) -> ManagedProcess:
        check = subprocess.run(
            [*self.command(), "-t"],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            timeout=60,
        )
        if check.returncode != 0:
            raise ProxyUnavailableError(f"nginx refused {self.conf}:\n{check.stderr[-2000:]}")
        self.process = ManagedProcess(
            "nginx", self.command(), self.prefix / "logs" / "nginx.out", env, self.prefix
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.listen_port, self.listen_host):
            if not self.process.running() or time.monotonic() > deadline:
                raise ProxyUnavailableError(
                    f"nginx did not start; see {self.process.log_path}:\n"
                    + self.process.log_text()[-2000:]
                )
            time.sleep(0.2)
        return self.process

    def log_lines(self) -> list[str]:
        if not self.access_log.exists():
            return []
        return self.access_log.read_text(encoding="utf-8", errors="replace").splitlines()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
