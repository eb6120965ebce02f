"""The Flower apps in Flower's Ray simulation: one simulated SuperNode per client."""

from __future__ import annotations

import os

from flwr.simulation import run_simulation

from fedprostate.config import RunConfig
from fedprostate.fl.client_app import make_client_app
from fedprostate.fl.server_app import make_server_app

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


def simulate(cfg: RunConfig, num_clients: int, verbose: bool = False) -> None:
    """Run the ServerApp and ``num_clients`` ClientApps of ``cfg`` (paths already absolute)."""
    flat = cfg.to_flat()
    cpus = os.cpu_count() or 2
    backend_config = {
        "client_resources": {"num_cpus": cfg.fl.client_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "include_dashboard": False, "logging_level": "error"},
    }
    run_simulation(
        server_app=make_server_app(flat),
        client_app=make_client_app(flat),
        num_supernodes=num_clients,
        backend_config=backend_config,
        verbose_logging=verbose,
    )
