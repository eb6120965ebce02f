"""Robust aggregation options, the finite-aggregate guard, and rounds that never wait forever."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from test_faults import SHAPES, _reply, _strategy, _tensors, server_identity  # noqa: F401

from fedprostate.config import ConfigError, RunConfig
from fedprostate.fl import wire
from fedprostate.fl.strategies import make_strategy


@pytest.mark.parametrize(
    "settings, base, attrs",
    [
        ({"fl.strategy": "fedmedian"}, FedMedian, {}),
        ({"fl.strategy": "fedtrimmedavg", "fl.trim_beta": 0.3}, FedTrimmedAvg, {"beta": 0.3}),
        ({"fl.strategy": "krum", "fl.num_malicious": 1}, Krum, {"num_malicious_nodes": 1}),
        (
            {"fl.strategy": "multikrum", "fl.num_malicious": 1},
            MultiKrum,
            {"num_malicious_nodes": 1, "num_nodes_to_select": 6},
        ),
        ({"fl.strategy": "bulyan", "fl.num_malicious": 1}, Bulyan, {"num_malicious_nodes": 1}),
    ],
)
def test_robust_options_are_flowers_own_classes(settings, base, attrs):
    strategy = make_strategy(RunConfig.from_flat(settings), num_clients=7)
    assert isinstance(strategy, base)
    for name, value in attrs.items():
        assert getattr(strategy, name) == value


def test_robust_options_are_validated():
    with pytest.raises(ConfigError, match="needs at least 7 sites"):
        make_strategy(
            RunConfig.from_flat({"fl.strategy": "bulyan", "fl.num_malicious": 1}), num_clients=6
        )
    with pytest.raises(ConfigError, match="fl.num_malicious .* belongs to krum"):
        RunConfig.from_flat({"fl.strategy": "fedavg", "fl.num_malicious": 1})
    with pytest.raises(ConfigError, match=r"fl.trim_beta = 0.6 .*\(0, 0.5\)"):
        RunConfig.from_flat({"fl.strategy": "fedtrimmedavg", "fl.trim_beta": 0.6})
    with pytest.raises(ConfigError, match="fl.clip_norm"):
        RunConfig.from_flat({"fl.clip_norm": -1.0})


def test_update_norm_clipping_bounds_a_scaled_update():
    strategy = _strategy("fedavg")
    strategy.clip_norm = 1.0
    honest = _tensors(0.1)
    boosted = {k: v * 1000 for k, v in honest.items()}
    arrays, _ = strategy.aggregate_train(1, [_reply(1, "siteA", boosted)])
    out = wire.from_record(arrays)
    norm = np.sqrt(sum(float((v**2).sum()) for v in out.values()))
    assert norm == pytest.approx(1.0, rel=1e-5)  # the reference (what the site received) is 0
    [entry] = strategy.ledger.clients
    assert entry["clipped"] and entry["update_norm"] == pytest.approx(100 * np.sqrt(10), rel=1e-5)


def test_median_ignores_one_huge_reply():
    strategy = _strategy("fedmedian")
    replies = [_reply(i, f"site{i}", _tensors(float(i))) for i in (1, 2, 3)]
    replies.append(_reply(4, "site4", _tensors(1e6)))
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(wire.from_record(arrays)["head.weight"], 2.5)


def test_a_non_finite_fedadam_state_is_dropped_and_the_state_kept():
    """Finding 2: FedAdam with one reply of 3e38 set v_t = inf forever (and checkpointed it)."""
    strategy = _strategy("fedadam")
    strategy.current_arrays = _tensors(0.0)
    arrays, _ = strategy.aggregate_train(1, [_reply(1, "siteA", _tensors(0.1))])
    assert arrays is not None
    before = {
        slot: {k: v.copy() for k, v in getattr(strategy, slot).items()} for slot in ("m_t", "v_t")
    }
    strategy.current_arrays = wire.from_record(arrays)
    assert strategy.aggregate_train(2, [_reply(1, "siteA", _tensors(3e38))]) == (None, None)
    for slot, values in before.items():
        for k, v in values.items():
            np.testing.assert_array_equal(getattr(strategy, slot)[k], v)
    assert all(np.isfinite(v).all() for v in strategy.optimizer_state().values())
    assert any("v_t" in note and "NaN/Inf" in note for note in strategy.ledger.notes)
    # The next honest round trains on from the kept state.
    arrays, _ = strategy.aggregate_train(3, [_reply(1, "siteA", _tensors(0.2))])
    assert arrays is not None and all(
        np.isfinite(v).all() for v in wire.from_record(arrays).values()
    )


class _Grid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def test_a_dead_node_does_not_stall_a_round_beyond_the_timeout():
    """Finding 4: with fewer nodes than min_available_nodes Flower's sampler waited forever."""
    strategy = _strategy("fedavg")  # min_available_nodes 2
    strategy.node_wait = 0.5
    out: dict = {}

    def configure():
        arrays = wire.to_record(_tensors(0.0))
        from flwr.app import ConfigRecord

        out["train"] = list(strategy.configure_train(1, arrays, ConfigRecord(), _Grid([7])))
        out["evaluate"] = list(strategy.configure_evaluate(1, arrays, ConfigRecord(), _Grid([7])))

    worker = threading.Thread(target=configure, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "configure_train waited for a node that never came"
    assert out == {"train": [], "evaluate": []}
    assert time.monotonic() - started < 5
    assert "training skipped: 1 node(s) connected, 2 needed" in strategy.ledger.notes[0]
    # Enough nodes: the round is configured at once, for the connected nodes.
    from flwr.app import ConfigRecord

    messages = list(
        strategy.configure_train(2, wire.to_record(_tensors(0.0)), ConfigRecord(), _Grid([7, 8, 9]))
    )
    assert sorted(m.metadata.dst_node_id for m in messages) == [7, 8, 9]
