"""``fedprostate federate``: the Flower apps in Ray simulation, one SuperNode per client."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedprostate.config import RunConfig
from fedprostate.engine import setup


def prepare_run_config(cfg: RunConfig, out: str | Path, resume: bool = False) -> RunConfig:
    """Absolute paths (Flower's processes run elsewhere) and one torch thread per client CPU."""
    changes: dict = {"out": str(Path(out).resolve()), "resume": resume}
    if cfg.data.cache:
        changes["data.cache"] = str(Path(cfg.data.cache).resolve())
    if cfg.model.foundation:
        changes["model.foundation"] = str(Path(cfg.model.foundation).resolve())
    if cfg.train.threads == 0:
        changes["train.threads"] = max(1, int(cfg.fl.client_cpus))
    return cfg.replace(**changes)


def federate(cfg: RunConfig, out: str | Path, resume: bool = False, verbose: bool = False) -> dict:
    """Run a federated fine-tuning simulation; returns the run's summary.json content."""
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    from flwr.simulation import run_simulation

    from fedprostate.fl.client_app import make_client_app
    from fedprostate.fl.server_app import make_server_app

    cfg = prepare_run_config(cfg, out, resume)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    num_clients = len(setup.client_names(cfg))
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
    summary_path = Path(cfg.out) / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(
            f"the federated run ended without writing {summary_path}; see the log above"
        )
    return json.loads(summary_path.read_text(encoding="utf-8"))
