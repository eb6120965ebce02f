"""A real Flower deployment on loopback: one SuperLink, one SuperNode per hospital, TLS + node auth.

This is what a consortium runs, on one machine: ``flower-superlink`` with a server certificate
from a consortium CA and ``--enable-supernode-auth``; every ``flower-supernode`` trusts only the
CA, signs in with its own ECDSA key (registered with ``flwr supernode register``) and names its
data in ``--node-config``; the app is started with ``flwr run <app> <connection>``. The ``flwr``
CLI reads its SuperLink connection from ``$FLWR_HOME/config.toml``: each deployment writes its own
(private ``FLWR_HOME`` under the deployment folder), as does every SuperNode (its installed apps).
Every process is stopped on close, also after Ctrl-C or an exception.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import tomli_w

from fedprostate.config import RunConfig, flatten
from fedprostate.fl.deploy.certs import (
    NodeKeys,
    ServerCertificates,
    make_node_keys,
    make_server_certificates,
)
from fedprostate.fl.deploy.processes import LOOPBACK, ManagedProcess, free_port, port_open

CONNECTION = "fedprostate"  # name of the SuperLink connection in the deployment's Flower config


def flower_bin(name: str) -> str:
    """A Flower executable from this environment (never a different installation on PATH)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: install fedprostate (it depends on flwr)")
    return found


def app_dir() -> Path:
    """The Flower app: the project folder when it has ``[tool.flwr.app]``.

    Installed from a wheel (no source tree) a minimal app folder is written instead: the same
    components and defaults, importing the installed ``fedprostate`` package.
    """
    here = Path(__file__).resolve()
    for parent in here.parents:
        pyproject = parent / "pyproject.toml"
        if pyproject.exists() and "[tool.flwr.app]" in pyproject.read_text(encoding="utf-8"):
            return parent
    return Path()


def write_app_dir(out: Path) -> Path:
    from importlib.metadata import version

    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "project": {"name": "fedprostate", "version": version("fedprostate")},
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedprostate",
                    "components": {
                        "serverapp": "fedprostate.fl.server_app:app",
                        "clientapp": "fedprostate.fl.client_app:app",
                    },
                    "config": nest(RunConfig().to_flat()),
                }
            }
        },
    }
    (out / "pyproject.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")
    return out


def app_config_keys(app: Path) -> list[str]:
    """Dotted keys that the app's ``[tool.flwr.app.config]`` defines (all others are refused)."""
    doc = tomllib.loads((app / "pyproject.toml").read_text(encoding="utf-8"))
    return list(flatten(doc["tool"]["flwr"]["app"].get("config", {})))


def nest(flat: dict) -> dict:
    """Dotted keys → nested tables (what Flower flattens back to dotted keys)."""
    out: dict = {}
    for key, value in flat.items():
        *groups, name = key.split(".")
        node = out
        for g in groups:
            node = node.setdefault(g, {})
        node[name] = value
    return out


def node_config_text(values: dict) -> str:
    """``--node-config`` text: space-separated ``key=value`` with TOML values."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in values.items())


class LocalDeployment:
    """Certificates, keys, a SuperLink and SuperNodes under one folder; a context manager."""

    def __init__(self, root: str | Path, echo: Callable[[str], None] = print) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.flwr_home = self.root / "flwr"
        self.logs = self.root / "logs"
        self.superlink: ManagedProcess | None = None
        self.supernodes: dict[str, ManagedProcess] = {}
        self.port = free_port()
        self.database = self.root / "superlink.db"
        self.certs: ServerCertificates = make_server_certificates(self.root / "certs")
        self._write_flower_config()

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
                    "address": f"{LOOPBACK}:{self.port}",
                    "root-certificates": str(self.certs.ca_cert),
                },
            }
        }
        (self.flwr_home / "config.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")

    # ---- SuperLink -----------------------------------------------------------------------
    def start_superlink(self, timeout: float = 90.0) -> ManagedProcess:
        cmd = [
            flower_bin("flower-superlink"),
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--ssl-certfile", str(self.certs.server_cert),
            "--ssl-keyfile", str(self.certs.server_key),
            "--ssl-ca-certfile", str(self.certs.ca_cert),
            "--enable-supernode-auth",
            "--database", str(self.database),  # registered nodes and runs survive a restart
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        # The ServerApp runs in the SuperLink's working directory: paths in the config are absolute.
        self.superlink = ManagedProcess(
            "superlink", cmd, self.logs / "superlink.log", self.env(), self.root
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if not self.superlink.running() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"flower-superlink did not start; see {self.superlink.log_path}:\n"
                    + self.superlink.log_text()[-2000:]
                )
            time.sleep(0.3)
        self.echo(f"SuperLink listening on https://{LOOPBACK}:{self.port} (TLS, node auth)")
        return self.superlink

    def crash_superlink(self) -> None:
        if self.superlink is not None:
            self.superlink.crash()

    # ---- SuperNodes ----------------------------------------------------------------------
    def node_keys(self, site: str) -> NodeKeys:
        keys = self.root / "keys"
        private = keys / site
        if private.exists():
            return NodeKeys(private, keys / f"{site}.pub")
        return make_node_keys(keys, site)

    def register(self, site: str, public_key: Path | None = None) -> int:
        """``flwr supernode register``: the coordinator admits one hospital's public key."""
        key = public_key or self.node_keys(site).public_key
        out = self.flwr(["supernode", "register", str(key), CONNECTION, "--format", "json"])
        start = out.find("{")
        try:
            return int(json.loads(out[start:])["node-id"])
        except (ValueError, KeyError) as exc:
            raise RuntimeError(f"registering {site} failed:\n{out}") from exc

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
    ) -> ManagedProcess:
        home = self.root / "nodes" / site
        values = {
            "site": site,
            "cache": str(Path(cache).resolve()),
            "state-dir": str(home / "state"),
            **(extra_config or {}),
        }
        cmd = [flower_bin("flower-supernode"), "--superlink", f"{LOOPBACK}:{self.port}"]
        if insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", str(root_certificates or self.certs.ca_cert)]
        if authenticate:
            key = private_key or self.node_keys(site).private_key
            cmd += ["--auth-supernode-private-key", str(key)]
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
    def flwr(self, args: list[str], timeout: float = 120.0) -> str:
        done = subprocess.run(
            [flower_bin("flwr"), *args],
            env=self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def write_run_config(self, cfg: RunConfig) -> Path:
        path = self.root / "run_config.toml"
        path.write_text(tomli_w.dumps(nest(cfg.to_flat())), encoding="utf-8")
        return path

    def submit(self, cfg: RunConfig) -> ManagedProcess:
        """``flwr run APP CONNECTION --run-config FILE --stream`` in the background."""
        app = app_dir()
        if app == Path():
            app = write_app_dir(self.root / "app")
        unknown = set(cfg.to_flat()) - set(app_config_keys(app))
        if unknown:  # Flower would answer only "Invalid run configuration"
            raise ValueError(
                f"{app / 'pyproject.toml'} [tool.flwr.app.config] lacks defaults for "
                f"{sorted(unknown)}: every RunConfig key needs one"
            )
        cmd = [
            flower_bin("flwr"), "run", str(app), CONNECTION,
            "--run-config", str(self.write_run_config(cfg)),
            "--stream",
        ]  # fmt: skip
        return ManagedProcess("flwr-run", cmd, self.logs / "flwr_run.log", self.env(), app)

    def run(self, cfg: RunConfig, timeout: float = 3600.0) -> dict:
        """Run the app to the end, echoing its log; returns the run's summary.json."""
        summary = Path(cfg.out) / "summary.json"
        started = time.time()
        proc = self.submit(cfg)
        try:
            follow(proc, self.echo, timeout, lambda: _written_after(summary, started))
        finally:
            proc.stop()
        if not _written_after(summary, started):
            raise RuntimeError(
                f"the run ended without writing {summary}; logs in {self.logs}:\n"
                + proc.log_text()[-3000:]
            )
        return json.loads(summary.read_text(encoding="utf-8"))

    # ---- shutdown ------------------------------------------------------------------------
    def close(self) -> None:
        for proc in self.supernodes.values():
            proc.stop()
        if self.superlink is not None:
            self.superlink.stop()

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _written_after(path: Path, t0: float) -> bool:
    return path.exists() and path.stat().st_mtime >= t0


def follow(
    proc: ManagedProcess, echo: Callable[[str], None], timeout: float, done: Callable[[], bool]
) -> None:
    """Echo a process's log lines as they come until it exits, ``done()`` or the timeout."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        text = proc.log_text()
        for line in text[seen:].splitlines():
            echo(line)
        seen = len(text)
        if not proc.running() or done():
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run did not finish within {timeout:.0f} s")
        time.sleep(0.5)


def deployment_config(cfg: RunConfig, out: str | Path, n_sites: int, resume: bool = False):
    """The run config the SuperLink gets: absolute paths, no data on the server (federated
    evaluation only), every site connected before round 1, one torch thread per ClientApp."""
    if cfg.data.partition != "natural":
        raise ValueError(
            "a deployment is one SuperNode per hospital: data.partition must be natural"
        )
    changes: dict = {
        "out": str(Path(out).resolve()),
        "resume": resume,
        "data.cache": "",
        "fl.min_available_nodes": n_sites,
        "fl.min_train_nodes": min(cfg.fl.min_train_nodes, n_sites),
    }
    if cfg.model.foundation:
        changes["model.foundation"] = str(Path(cfg.model.foundation).resolve())
    if cfg.train.threads == 0:
        changes["train.threads"] = 1
    return cfg.replace(**changes)


def deploy_local(
    cfg: RunConfig,
    cache: str | Path,
    sites: list[str],
    out: str | Path,
    echo: Callable[[str], None] = print,
    timeout: float = 24 * 3600.0,
) -> dict:
    """SuperLink + one SuperNode per site (TLS, node auth), the run to the end, all stopped."""
    run_cfg = deployment_config(cfg, out, len(sites), resume=cfg.resume)
    Path(run_cfg.out).mkdir(parents=True, exist_ok=True)
    with LocalDeployment(Path(run_cfg.out) / "deployment", echo=echo) as dep:
        dep.start_superlink()
        for site in sites:
            node_id = dep.register(site)
            echo(f"registered {site}: node {node_id}")
        for site in sites:
            dep.start_supernode(site, cache)
        for site in sites:
            dep.wait_connected(site)
            echo(f"SuperNode {site} connected (log: {dep.supernodes[site].log_path})")
        return dep.run(run_cfg, timeout=timeout)
