"""Client sampling across a kill and --resume: the sites each round samples are those of the
uninterrupted run, although the restarted server's generator starts afresh and the restarted
simulation gives the sites other node ids (Flower draws them from os.urandom)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedprostate.config import RunConfig
from fedprostate.fl import wire
from fedprostate.fl.client_app import make_client_app
from fedprostate.fl.inproc import InProcessGrid
from fedprostate.fl.strategies import make_strategy

SITES = [f"site{c}" for c in "ABCDE"]
SHAPES = {"head.weight": (4,)}
SEED = 7
CFG = RunConfig.from_flat(
    {
        "seed": SEED,
        "fl.strategy": "fedadam",
        "fl.fraction_train": 0.4,  # 2 of 5 sites train each round
        "fl.fraction_evaluate": 0.6,  # 3 of 5 evaluate
        "fl.min_sites": 2,
        "fl.min_train_nodes": 2,
        "fl.min_available_nodes": 2,
    }
)


def _process(order: list[int], round_offset: int):
    """A fresh server process: the generator seeded as run_server seeds it, a strategy resumed
    after ``round_offset`` rounds, and a grid whose node 101 + i is site ``order[i]``."""
    random.seed(SEED)
    grid = InProcessGrid(
        make_client_app(), len(SITES), node_config=lambda i: {"site": SITES[order[i]]}
    )
    strategy = make_strategy(CFG, num_clients=len(SITES))
    strategy.attach(SHAPES, "fp32", SEED, "abc", round_offset, node_wait=5.0)
    return strategy, grid


def _sampled(strategy, grid, rounds: range) -> list[tuple[list[str], list[str]]]:
    """Per round: the sites sent a training message, then those sent an evaluation message."""
    arrays = wire.to_record({"head.weight": np.zeros(4, np.float32)})
    out = []
    for r in rounds:
        per_phase = []
        for configure in (strategy.configure_train, strategy.configure_evaluate):
            messages = configure(r, arrays, ConfigRecord(), grid)
            sites = [grid.contexts[m.metadata.dst_node_id].node_config["site"] for m in messages]
            per_phase.append(sorted(sites))
        out.append(tuple(per_phase))
        random.random()  # what else draws from the global generator (Flower's retry jitter)
    return out


@pytest.mark.usefixtures("server_identity")
def test_resumed_run_samples_the_sites_of_the_uninterrupted_run():
    strategy, grid = _process([0, 1, 2, 3, 4], round_offset=0)
    uninterrupted = _sampled(strategy, grid, range(1, 9))
    # Sampling really subsamples, and not the same sites every round.
    assert all(len(train) == 2 and len(evaluate) == 3 for train, evaluate in uninterrupted)
    assert len({tuple(train) for train, _ in uninterrupted}) > 2

    strategy, grid = _process([0, 1, 2, 3, 4], round_offset=0)
    before_kill = _sampled(strategy, grid, range(1, 4))
    strategy, grid = _process([3, 0, 4, 2, 1], round_offset=3)  # other node ids per site
    after_resume = _sampled(strategy, grid, range(1, 6))
    assert before_kill + after_resume == uninterrupted


@pytest.fixture
def server_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


@pytest.mark.usefixtures("server_identity")
def test_pretraining_sites_answer_the_site_query():
    """Federated pre-training samples through the same hooks: its ClientApp must answer too
    (without a query handler every node stayed unknown and was ordered by its random id)."""
    from fedprostate.fl.pretrain_apps import make_pretrain_client_app
    from fedprostate.fl.sampling import ask_sites

    order = [2, 0, 1]
    grid = InProcessGrid(
        make_pretrain_client_app(), 3, node_config=lambda i: {"site": f"site{order[i]}"}
    )
    assert ask_sites(grid, grid.nodes, timeout=5.0) == {101: "site2", 102: "site0", 103: "site1"}


def _secagg_process(order: list[int], round_offset: int):
    """SecAgg+ samples through Flower's legacy client manager: the same guarantee."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy

    from fedprostate.fl.secagg import SecAggFedAvg, SecAggServer

    random.seed(SEED)
    cfg = CFG.replace(**{"fl.strategy": "fedavg", "fl.secure_aggregation": True})
    grid = InProcessGrid(
        make_client_app(), len(SITES), node_config=lambda i: {"site": SITES[order[i]]}
    )
    server = SecAggServer(cfg, len(SITES), 1000)
    server.attach(SHAPES, "fp32", SEED, "abc", round_offset, node_wait=5.0)
    server.raw_grid = grid
    strategy = SecAggFedAvg(server, sorted(SHAPES), None, fraction_fit=0.4, fraction_evaluate=0.0,
                            min_fit_clients=3, min_available_clients=3,
                            initial_parameters=ndarrays_to_parameters([np.zeros(4, np.float32)]))  # fmt: skip
    manager = SimpleClientManager()
    for node in grid.nodes:
        manager.register(GridClientProxy(node, grid, 1))
    params = ndarrays_to_parameters([np.zeros(4, np.float32)])

    def sampled(rounds: range) -> list[list[str]]:
        picks = [strategy.configure_fit(r, params, manager) for r in rounds]
        return [
            sorted(grid.contexts[p.node_id].node_config["site"] for p, _ in pairs)
            for pairs in picks
        ]

    return sampled


@pytest.mark.usefixtures("server_identity")
def test_secure_aggregation_resumes_with_the_same_sites():
    uninterrupted = _secagg_process([0, 1, 2, 3, 4], 0)(range(1, 9))
    assert all(len(sites) == 3 for sites in uninterrupted)  # 3 of 5 (SecAgg+ needs 3)
    assert len({tuple(s) for s in uninterrupted}) > 2
    before_kill = _secagg_process([0, 1, 2, 3, 4], 0)(range(1, 4))
    after_resume = _secagg_process([3, 0, 4, 2, 1], 3)(range(1, 6))
    assert before_kill + after_resume == uninterrupted


def test_the_site_query_is_counted_in_the_round_ledger():
    """Every message kind is counted: the site query (asked once per node, only when a round
    leaves a node out) lands in the round's metrics with its bytes both ways."""
    strategy, grid = _process([0, 1, 2, 3, 4], 0)
    _sampled(strategy, grid, range(1, 2))
    asked = strategy.ledger.pop()["site_query"]
    down = len("site-name") + 1
    up = sum(len(wire.REPORT_KEY) + len("site") + len(s) for s in SITES)
    assert asked == {"nodes": 5, "bytes_down": 5 * down, "bytes_up": up}
    _sampled(strategy, grid, range(2, 3))  # known sites are not asked again
    assert "site_query" not in strategy.ledger.pop()
