"""The Flower apps in Flower's Ray simulation: one simulated SuperNode per client.

Entry point: Flower's simulation runtime ``_run_simulation`` — the function that both the
deprecated public ``run_simulation`` wrapper and ``flwr run``'s simulation process
(``flwr.simulation.app.run_simulation_process``) call. Flower 1.42 has no public, non-deprecated
in-process entry point: its replacement, ``flwr run``, starts a detached local SuperLink and
installs the app as a FAB, which cannot take this project's app objects and overrides. The
function is private, so ``flwr`` is pinned to 1.42.* and ``tests/fl/test_simulation_log.py``
checks its signature.

Client resources are configuration (``fl.client_cpus``, ``fl.client_gpus``): Ray hides every GPU
from a client that asks for none, so ``train.device=cuda`` needs ``fl.client_gpus > 0``.
``fl.ray_address`` joins a running Ray cluster (several machines) instead of starting one.
Flower's console log is made fit for files: no colour codes when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

from flwr.common.logger import update_console_handler
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

from fedprostate.config import ConfigError, RunConfig
from fedprostate.fl.client_app import make_client_app
from fedprostate.fl.pretrain_apps import make_pretrain_client_app, make_pretrain_server_app
from fedprostate.fl.server_app import make_server_app

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


@contextlib.contextmanager
def plain_flower_log():
    """Flower's console log without colour codes off a terminal."""
    update_console_handler(colored=sys.stderr.isatty())
    try:
        yield
    finally:
        update_console_handler(colored=True)


def backend_config(cfg: RunConfig) -> dict:
    """Flower's Ray backend settings: resources per client and the cluster to run on."""
    if cfg.train.device.startswith("cuda") and cfg.fl.client_gpus <= 0:
        raise ConfigError(
            "fl.client_gpus: must be > 0 (e.g. 0.25 = four clients share a GPU) with "
            f"train.device={cfg.train.device}; Ray hides the GPU from a client that asks for none"
        )
    if cfg.fl.ray_address:  # a running cluster: its own nodes declare their CPUs and GPUs
        init_args: dict = {"address": cfg.fl.ray_address, "logging_level": "error"}
    else:  # "local": a new private Ray even where `ray start` left a cluster Ray would join
        init_args = {"address": "local", "num_cpus": os.cpu_count() or 2, "logging_level": "error"}
    init_args["include_dashboard"] = False
    return {
        "client_resources": {"num_cpus": cfg.fl.client_cpus, "num_gpus": cfg.fl.client_gpus},
        "init_args": init_args,
    }


def check_ray_address(address: str) -> None:
    """Refuse an ``fl.ray_address`` host:port where nothing listens, before Flower starts: Ray
    would retry for minutes and Flower's ServerApp would then wait for nodes until its timeout."""
    if address in ("", "auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f'fl.ray_address: {address!r} is not "", "auto" or host:port')
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        raise ConfigError(
            f"fl.ray_address: no Ray cluster answers at {address} ({exc}); start one there with "
            f"`ray start --head --port={port}`, or leave fl.ray_address empty for a private Ray"
        ) from None


def simulate(
    cfg: RunConfig, num_clients: int, verbose: bool = False, pretrain: bool = False
) -> None:
    """Run the ServerApp and ``num_clients`` ClientApps of ``cfg`` (paths already absolute):
    federated fine-tuning, or federated self-supervised pre-training with ``pretrain``."""
    check_ray_address(cfg.fl.ray_address)
    flat = cfg.to_flat()
    if pretrain:
        server_app, client_app = make_pretrain_server_app(flat), make_pretrain_client_app(flat)
    else:
        server_app, client_app = make_server_app(flat), make_client_app(flat)
    backend = backend_config(cfg)
    with plain_flower_log():
        _run_simulation(
            num_supernodes=num_clients,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app,
            server_app=server_app,
            backend_name="ray",
            backend_config=backend,
            verbose_logging=verbose,
        )
