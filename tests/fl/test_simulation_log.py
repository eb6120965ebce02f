"""Flower's simulation entry: plain log in files, client resources and cluster from config."""

import inspect
import io
import logging
import socket
import sys

import pytest
from flwr.common.logger import FLOWER_LOGGER
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.logger import console_handler

from fedprostate.config import ConfigError, RunConfig
from fedprostate.fl import simulation
from fedprostate.fl.simulation import backend_config, plain_flower_log


def test_plain_flower_log_has_no_colours_in_files(monkeypatch):
    stream = io.StringIO()  # not a terminal, like a log file
    monkeypatch.setattr(console_handler, "stream", stream)
    monkeypatch.setattr("sys.stderr", stream)
    with plain_flower_log():
        FLOWER_LOGGER.log(logging.INFO, "round %d done", 1)
    assert "round 1 done" in stream.getvalue()
    assert "\x1b[" not in stream.getvalue()
    FLOWER_LOGGER.log(logging.INFO, "after")  # Flower's own settings are back afterwards
    assert "\x1b[" in stream.getvalue().split("round 1 done")[1]


def test_client_resources_and_cluster_come_from_config():
    cfg = RunConfig.load(None, ["fl.client_cpus=2", "fl.client_gpus=0.25"])
    backend = backend_config(cfg)
    assert backend["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.25}
    # "local": a private Ray even on a machine where `ray start` runs (ray.init would join it)
    assert "num_cpus" in backend["init_args"] and backend["init_args"]["address"] == "local"
    joined = backend_config(RunConfig.load(None, ["fl.ray_address=127.0.0.1:6379"]))
    # a running cluster refuses num_cpus/num_gpus at ray.init: its nodes declare their own
    assert joined["init_args"]["address"] == "127.0.0.1:6379"
    assert "num_cpus" not in joined["init_args"] and "num_gpus" not in joined["init_args"]


def test_a_ray_address_where_nothing_listens_is_refused_before_flower_starts(monkeypatch):
    """Ray would retry for minutes, then Flower's ServerApp would wait for nodes for an hour."""
    with socket.socket() as sock:  # a free port, closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(simulation, "_run_simulation", lambda **kw: pytest.fail("Flower started"))
    cfg = RunConfig.load(None, [f"fl.ray_address=127.0.0.1:{port}"])
    with pytest.raises(
        ConfigError, match=f"fl.ray_address: no Ray cluster answers at 127.0.0.1:{port}"
    ):
        simulation.simulate(cfg, 3)
    with pytest.raises(ConfigError, match="host:port"):
        simulation.check_ray_address("nohostport")
    with socket.socket() as server:  # something listens: accepted
        server.bind(("127.0.0.1", 0))
        server.listen()
        simulation.check_ray_address(f"127.0.0.1:{server.getsockname()[1]}")
    simulation.check_ray_address("auto")


def test_cuda_clients_need_a_gpu_share():
    with pytest.raises(ConfigError, match="fl.client_gpus"):
        backend_config(RunConfig.load(None, ["train.device=cuda"]))
    assert backend_config(RunConfig.load(None, ["train.device=cuda", "fl.client_gpus=0.5"]))


def test_the_runtime_is_called_without_the_deprecated_wrapper(monkeypatch):
    """simulate() calls Flower's runtime directly (no deprecation notice in any federate log)
    with the arguments ``_run_simulation`` still takes in the pinned Flower."""
    params = inspect.signature(_run_simulation).parameters
    calls = []

    def fake_runtime(**kwargs):
        assert set(kwargs) <= set(params), set(kwargs) - set(params)
        calls.append(kwargs)

    def deprecated(*args, **kwargs):
        raise AssertionError("the deprecated run_simulation was called")

    monkeypatch.setattr(simulation, "_run_simulation", fake_runtime)
    runtime_module = sys.modules[_run_simulation.__module__]
    monkeypatch.setattr(runtime_module, "run_simulation", deprecated)
    monkeypatch.setattr("flwr.simulation.run_simulation", deprecated)
    simulation.simulate(RunConfig.load(None, ["fl.client_gpus=0.5"]), num_clients=3)
    assert calls[0]["num_supernodes"] == 3
    assert calls[0]["backend_config"]["client_resources"]["num_gpus"] == 0.5
