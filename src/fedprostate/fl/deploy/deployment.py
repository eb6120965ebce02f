"""A real Flower deployment on loopback, shaped as a hospital security review expects it.

What a consortium runs, on one machine:

- ``flower-superlink`` with a server certificate from the consortium CA and
  ``--enable-supernode-auth``, listening on **loopback only**: its Control API (``flwr run``,
  ``stop``, ``supernode register``) is reachable by the coordinator alone;
- **nginx** in front of it (:mod:`.proxy`), the only port hospitals reach, forwarding only the
  Fleet API routes an authenticated SuperNode calls;
- the coordinator **registers** each hospital's public key (``flwr supernode register``) and
  writes the node id Flower returns, with the hospital's preflight split sizes, into the site
  registry (``sites.json``, :mod:`fedprostate.fl.registry`) that the ServerApp trusts;
- the app is **signed** with the consortium's Ed25519 key and served by a Flower-Hub-protocol
  registry (:mod:`.signing`); ``flwr run @fedprostate/fedprostate==VERSION`` makes the SuperLink
  fetch it with its signature, and every ``flower-supernode`` runs with ``--trusted-entities``,
  so an unsigned or re-signed app never starts at a hospital;
- every ``flower-supernode`` trusts only the CA, signs in with its own ECDSA key and names its
  data in ``--node-config``.

Registrations, runs started/stopped (and by whom) go to the coordinator's append-only audit log
(``<run>/audit.jsonl``), to which the ServerApp adds every round. The ``flwr`` CLI reads its
SuperLink connection from ``$FLWR_HOME/config.toml``: each deployment writes its own. Every
process is stopped on close, also after Ctrl-C or an exception. The CA, the consortium key, the
registry and the SuperLink database survive restarts, so ``--resume`` rejoins the same federation.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import tomli_w

from fedprostate.config import RunConfig
from fedprostate.fl.deploy.app import (
    app_config_keys,
    app_dir,
    deployment_config,
    flower_bin,
    nest,
    node_config_text,
    write_app_dir,
)
from fedprostate.fl.deploy.certs import NodeKeys, ServerCertificates, make_node_keys
from fedprostate.fl.deploy.certs import make_server_certificates as _make_certs
from fedprostate.fl.deploy.processes import (
    LOOPBACK,
    ManagedProcess,
    follow,
    follow_run,
    free_port,
    port_open,
    run_is_active,
    written_after,
)
from fedprostate.fl.deploy.proxy import FleetProxy
from fedprostate.fl.deploy.registration import register_node
from fedprostate.fl.deploy.signing import (
    DEFAULT_KEY_ID,
    AppRegistry,
    SignedApp,
    make_signing_key,
    sign_app,
    write_trusted_entities,
)
from fedprostate.records.audit import AUDIT_FILE, AuditLog

__all__ = ["LocalDeployment", "deploy_local", "deployment_config", "follow", "node_config_text"]

IN_MEMORY = ":flwr-in-memory:"  # flower-superlink --database: Flower's in-memory link state
SUPERLINK_STATES = ("file", "memory")  # SQLite under the deployment folder, or IN_MEMORY
CONNECTION = "fedprostate"  # name of the SuperLink connection in the deployment's Flower config


class DeployedRunError(RuntimeError):
    """The deployed run ended without its summary (one line: where the logs are)."""


class LocalDeployment:
    """CA, keys, registry, a SuperLink, its nginx front and SuperNodes under one folder."""

    def __init__(
        self,
        root: str | Path,
        echo: Callable[[str], None] = print,
        audit_path: str | Path | None = None,
        superlink_state: str = "file",
    ) -> None:
        if superlink_state not in SUPERLINK_STATES:
            raise ValueError(
                f"superlink_state must be one of {SUPERLINK_STATES}, not {superlink_state!r}"
            )
        self.root = Path(root).resolve()
        self.superlink_state = superlink_state
        self.root.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.flwr_home = self.root / "flwr"
        self.logs = self.root / "logs"
        self.superlink: ManagedProcess | None = None
        self.proxy: FleetProxy | None = None
        self.app_registry: AppRegistry | None = None
        self.supernodes: dict[str, ManagedProcess] = {}
        self.port = free_port()  # the SuperLink: loopback, coordinator only
        self.public_port = free_port()  # nginx: what hospitals reach
        self.database = self.root / "superlink.db"
        self.sites_file = self.root / "sites.json"
        self.audit = AuditLog(audit_path or self.root / AUDIT_FILE)
        self.certs: ServerCertificates = _make_certs(self.root / "certs")  # CA kept across starts
        consortium = self.root / "consortium"
        self.signing_key = consortium / "app_signing_key"
        if not self.signing_key.exists():
            make_signing_key(consortium, "app_signing_key")
        self.trusted_entities = write_trusted_entities(
            consortium / "trusted_entities.yaml",
            {DEFAULT_KEY_ID: self.signing_key.with_name("app_signing_key.pub")},
        )
        self._write_flower_config()

    @property
    def public_address(self) -> str:
        return f"{LOOPBACK}:{self.public_port}"

    # ---- environment ---------------------------------------------------------------------
    def env(self, flwr_home: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLWR_HOME=str(flwr_home or self.flwr_home),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",  # never `uv sync` a CUDA torch
            FLWR_DISABLE_UPDATE_CHECK="1",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
        )
        return env

    def _write_flower_config(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        doc = {
            "superlink": {
                "default": CONNECTION,
                CONNECTION: {
                    "address": f"{LOOPBACK}:{self.port}",  # the coordinator's own, loopback
                    "root-certificates": str(self.certs.ca_cert),
                },
            }
        }
        (self.flwr_home / "config.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")

    # ---- SuperLink, its front and the app registry ---------------------------------------
    def start_superlink(self, timeout: float = 90.0) -> ManagedProcess:
        if self.app_registry is None:
            self.app_registry = AppRegistry(self.root / "apps").start()
        cmd = [
            flower_bin("flower-superlink"),
            "--host", LOOPBACK,  # never 0.0.0.0: Control and Runtime APIs share this port
            "--port", str(self.port),
            "--ssl-certfile", str(self.certs.server_cert),
            "--ssl-keyfile", str(self.certs.server_key),
            "--ssl-ca-certfile", str(self.certs.ca_cert),
            "--enable-supernode-auth",
            # file: registered nodes and runs survive a restart; memory: no SQLite lock
            "--database", str(self.database) if self.superlink_state == "file" else IN_MEMORY,
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        env = self.env() | {"FLWR_SUPERGRID_API_URL": self.app_registry.api_url}
        # The ServerApp runs in the SuperLink's working directory: paths in the config are absolute.
        self.superlink = ManagedProcess(
            "superlink", cmd, self.logs / "superlink.log", env, self.root
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if not self.superlink.running() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"flower-superlink did not start; see {self.superlink.log_path}:\n"
                    + self.superlink.log_text()[-2000:]
                )
            time.sleep(0.3)
        self.echo(f"SuperLink on https://{LOOPBACK}:{self.port} (loopback: coordinator only)")
        return self.superlink

    def start_proxy(self) -> FleetProxy:
        self.proxy = FleetProxy(
            self.root / "proxy",
            LOOPBACK,
            self.public_port,
            self.port,
            self.certs.server_cert,
            self.certs.server_key,
            self.certs.ca_cert,
        )
        self.proxy.start(self.env())
        self.echo(f"Fleet API for hospitals on https://{self.public_address} (nginx, Fleet only)")
        self.audit.append(
            "superlink_started",
            control_api=f"{LOOPBACK}:{self.port}",
            fleet_api=self.public_address,
            tls=True,
            node_auth=True,
        )
        return self.proxy

    def start(self) -> None:
        self.start_superlink()
        self.start_proxy()

    def crash_superlink(self) -> None:
        if self.superlink is not None:
            self.superlink.crash()

    # ---- registration --------------------------------------------------------------------
    def node_keys(self, site: str) -> NodeKeys:
        keys = self.root / "keys"
        private = keys / site
        if private.exists():
            return NodeKeys(private, keys / f"{site}.pub")
        return make_node_keys(keys, site)

    def register(
        self, site: str, public_key: Path | None = None, train: int = 0, val: int = 0
    ) -> int:
        """The coordinator admits one hospital (``registration.register_node``)."""
        key = public_key or self.node_keys(site).public_key
        return register_node(
            self.flwr, key, site, train, val, self.sites_file, self.audit, CONNECTION
        )

    # ---- SuperNodes ----------------------------------------------------------------------
    def start_supernode(
        self,
        site: str,
        cache: str | Path,
        *,
        private_key: Path | None = None,
        authenticate: bool = True,
        root_certificates: Path | None = None,
        insecure: bool = False,
        extra_config: dict | None = None,
        max_wait_time: float | None = None,
        superlink: str | None = None,
        trusted_entities: Path | None | bool = True,
    ) -> ManagedProcess:
        home = self.root / "nodes" / site
        values = {
            "site": site,
            "cache": str(Path(cache).resolve()),
            "state-dir": str(home / "state"),
            **(extra_config or {}),
        }
        cmd = [flower_bin("flower-supernode"), "--superlink", superlink or self.public_address]
        if insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", str(root_certificates or self.certs.ca_cert)]
        if authenticate:
            key = private_key or self.node_keys(site).private_key
            cmd += ["--auth-supernode-private-key", str(key)]
        if trusted_entities:
            trusted = self.trusted_entities if trusted_entities is True else trusted_entities
            cmd += ["--trusted-entities", str(trusted)]
        cmd += [
            "--host", LOOPBACK,
            "--port", str(free_port()),  # its own ClientApp runtime API port
            "--node-config", node_config_text(values),
        ]  # fmt: skip
        if max_wait_time is not None:
            cmd += ["--max-wait-time", str(max_wait_time)]
        home.mkdir(parents=True, exist_ok=True)
        old = self.supernodes.get(site)
        if old is not None and old.running():
            raise RuntimeError(f"the SuperNode of {site} is already running")
        proc = ManagedProcess(
            f"supernode-{site}", cmd, self.logs / f"supernode_{site}.log", self.env(home), home
        )
        self.supernodes[site] = proc
        return proc

    def wait_connected(self, site: str, timeout: float = 90.0) -> None:
        proc = self.supernodes[site]
        if not proc.wait_for_log("SuperNode ID:", timeout):
            raise RuntimeError(
                f"SuperNode {site} did not connect; see {proc.log_path}:\n"
                + proc.log_text()[-2000:]
            )

    # ---- runs ----------------------------------------------------------------------------
    def flwr(self, args: list[str], timeout: float = 120.0, env: dict | None = None) -> str:
        done = subprocess.run(
            [flower_bin("flwr"), *args],
            env=env or self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def write_run_config(self, cfg: RunConfig) -> Path:
        path = self.root / "run_config.toml"
        path.write_text(tomli_w.dumps(nest(cfg.to_flat())), encoding="utf-8")
        return path

    def app(self) -> Path:
        app = app_dir()
        return write_app_dir(self.root / "app") if app == Path() else app

    def sign(self, signing_key: Path | None = None) -> SignedApp:
        """Build and sign the app (the consortium's key unless another is given)."""
        return sign_app(self.app(), signing_key or self.signing_key, self.root / "apps")

    def submit(
        self, cfg: RunConfig, signed: bool = True, signing_key: Path | None = None
    ) -> ManagedProcess:
        """``flwr run @APP==VERSION CONNECTION --run-config FILE --stream`` in the background
        (``signed=False``: ``flwr run APP_DIR``, an unsigned upload, for the refusal test)."""
        app = self.app()
        unknown = set(cfg.to_flat()) - set(app_config_keys(app))
        if unknown:  # Flower would answer only "Invalid run configuration"
            raise ValueError(
                f"{app / 'pyproject.toml'} [tool.flwr.app.config] lacks defaults for "
                f"{sorted(unknown)}: every RunConfig key needs one"
            )
        target, fab_sha, key_id = str(app), "", None
        if signed:
            signed_app = self.sign(signing_key)
            target, fab_sha, key_id = signed_app.spec, signed_app.fab_sha256, signed_app.key_id
        cmd = [
            flower_bin("flwr"), "run", target, CONNECTION,
            "--run-config", str(self.write_run_config(cfg)),
            "--stream",
        ]  # fmt: skip
        self.audit.append(
            "run_submitted",
            by=getpass.getuser(),
            app=target if signed else "unsigned upload",
            fab_sha256=fab_sha or None,
            signed_by=key_id,
            rounds=cfg.fl.rounds,
            resume=cfg.resume,
        )
        return ManagedProcess("flwr-run", cmd, self.logs / "flwr_run.log", self.env(), app)

    def _follow_log(self, run_id: str, n: int) -> ManagedProcess:
        cmd = [flower_bin("flwr"), "log", run_id, CONNECTION, "--stream"]
        return ManagedProcess("flwr-log", cmd, self.logs / f"flwr_log_{n}.log", self.env(),
                              self.root)  # fmt: skip

    def _run_active(self, run_id: str) -> bool:
        """Whether the SuperLink says the run goes on (asked up to 5 times: it can be busy)."""
        for _ in range(5):
            try:
                out = self.flwr(["ls", CONNECTION, "--run-id", run_id, "--format", "json"], 60)
                return run_is_active(out[out.index("{") :], run_id)
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):
                time.sleep(2)
        return False

    def run(self, cfg: RunConfig, timeout: float = 3600.0, **submit) -> dict:
        """Run the app to the end, echoing its log; returns the run's summary.json."""
        summary = Path(cfg.out) / "summary.json"
        started = time.time()
        proc = self.submit(cfg, **submit)
        try:
            proc = follow_run(proc, self._follow_log, self._run_active, self.echo, timeout,
                              lambda: written_after(summary, started))  # fmt: skip
        except BaseException as exc:
            self.audit.append("run_stopped", by=getpass.getuser(), reason=type(exc).__name__)
            raise
        finally:
            proc.stop()
        if not written_after(summary, started):
            raise DeployedRunError(f"the run ended without writing {summary}; logs in {self.logs}")
        return json.loads(summary.read_text(encoding="utf-8"))

    # ---- shutdown ------------------------------------------------------------------------
    def close(self) -> None:
        for proc in self.supernodes.values():
            proc.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self.superlink is not None:
            self.superlink.stop()
        if self.app_registry is not None:
            self.app_registry.stop()
            self.app_registry = None

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def deploy_local(
    cfg: RunConfig,
    cache: str | Path,
    sites: dict[str, dict[str, int]],
    out: str | Path,
    echo: Callable[[str], None] = print,
    timeout: float = 24 * 3600.0,
    signing_key: Path | None = None,
    warm_s: float = 0.0,
    superlink_state: str = "file",
) -> dict:
    """SuperLink + nginx + one SuperNode per site (TLS, node auth, signed app), the run to the
    end, all stopped. ``sites``: site → its preflight split sizes (``{"train": n, "val": m}``).
    ``warm_s`` > 0: each site's messages run in its warm process (``fl/warm.py``)."""
    root = Path(out).resolve() / "deployment"
    run_cfg = deployment_config(
        cfg, out, len(sites), resume=cfg.resume, sites_file=root / "sites.json"
    )
    Path(run_cfg.out).mkdir(parents=True, exist_ok=True)
    audit = Path(run_cfg.out) / AUDIT_FILE
    with LocalDeployment(root, echo, audit, superlink_state) as dep:
        dep.start()
        for site, sizes in sites.items():
            node_id = dep.register(site, train=sizes.get("train", 0), val=sizes.get("val", 0))
            echo(f"registered {site}: node {node_id}")
        warm = {"warm-seconds": float(warm_s)} if warm_s > 0 else None
        for site in sites:
            dep.start_supernode(site, cache, extra_config=warm)
        for site in sites:
            dep.wait_connected(site)
            echo(f"SuperNode {site} connected (log: {dep.supernodes[site].log_path})")
        summary = dep.run(run_cfg, timeout=timeout, signing_key=signing_key)
        dep.audit.append("run_ended", status=summary.get("status"), reason=summary.get("reason"))
        return summary
