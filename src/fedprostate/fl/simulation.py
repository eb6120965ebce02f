"""The Flower apps in Flower's Ray simulation: one simulated SuperNode per client.

Flower's console log is made fit for files while a simulation runs: no colour codes when stderr
is not a terminal, and without the deprecation notice ``run_simulation`` logs on every call (it is
the documented in-process entry point this project uses; ``flwr run`` is the deployment path).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from flwr.common.logger import FLOWER_LOGGER, update_console_handler
from flwr.simulation import run_simulation

from fedprostate.config import RunConfig
from fedprostate.fl.client_app import make_client_app
from fedprostate.fl.pretrain_apps import make_pretrain_client_app, make_pretrain_server_app
from fedprostate.fl.server_app import make_server_app

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


class _DropRunSimulationNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(
            "`run_simulation` function is deprecated" in str(a) for a in record.args or ()
        )


@contextlib.contextmanager
def plain_flower_log():
    """Flower's console log without colour codes off a terminal and without the notice."""
    notice = _DropRunSimulationNotice()
    FLOWER_LOGGER.addFilter(notice)
    update_console_handler(colored=sys.stderr.isatty())
    try:
        yield
    finally:
        FLOWER_LOGGER.removeFilter(notice)
        update_console_handler(colored=True)


def simulate(
    cfg: RunConfig, num_clients: int, verbose: bool = False, pretrain: bool = False
) -> None:
    """Run the ServerApp and ``num_clients`` ClientApps of ``cfg`` (paths already absolute):
    federated fine-tuning, or federated self-supervised pre-training with ``pretrain``."""
    flat = cfg.to_flat()
    if pretrain:
        server_app, client_app = make_pretrain_server_app(flat), make_pretrain_client_app(flat)
    else:
        server_app, client_app = make_server_app(flat), make_client_app(flat)
    cpus = os.cpu_count() or 2
    backend_config = {
        "client_resources": {"num_cpus": cfg.fl.client_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "include_dashboard": False, "logging_level": "error"},
    }
    with plain_flower_log():
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_clients,
            backend_config=backend_config,
            verbose_logging=verbose,
        )
