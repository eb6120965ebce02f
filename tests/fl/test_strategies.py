"""Strategy hooks: Flower's own classes, float32 out, absolute rounds, savable optimizer state."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedProx, FedYogi
from test_faults import SHAPES, _reply, _strategy, _tensors, server_identity  # noqa: F401

from fedprostate.config import RunConfig
from fedprostate.fl import wire
from fedprostate.fl.strategies import make_strategy


@pytest.mark.parametrize(
    "name, base",
    [
        ("fedavg", FedAvg),
        ("fedadam", FedAdam),
        ("fedyogi", FedYogi),
        ("fedadagrad", FedAdagrad),
        ("fedprox", FedProx),
    ],
)
def test_flower_classes_with_exposed_parameters(name, base):
    cfg = RunConfig.from_flat(
        {
            "fl.strategy": name,
            "fl.server_lr": 0.03,
            "fl.tau": 1e-4,
            "fl.beta_1": 0.8,
            "fl.beta_2": 0.95,
            "train.prox_mu": 0.1,
        }
    )
    strategy = make_strategy(cfg, num_clients=4)
    assert isinstance(strategy, base)
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        assert (strategy.eta, strategy.tau) == (0.03, 1e-4)
    if name in ("fedadam", "fedyogi"):
        assert (strategy.beta_1, strategy.beta_2) == (0.8, 0.95)
    if name == "fedprox":
        assert strategy.proximal_mu == 0.1


def _one_round(strategy, server_round: int) -> dict[str, np.ndarray]:
    replies = [_reply(1, "siteA", _tensors(1.0)), _reply(2, "siteB", _tensors(3.0))]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return wire.from_record(arrays)


def test_fedadam_output_is_float32():
    out = _one_round(_strategy("fedadam"), 1)
    assert all(v.dtype == np.float32 for v in out.values())


def test_round_offset_gives_the_absolute_round_to_flower():
    """FedAdam's bias correction uses the round number: a resumed run must pass the real one."""
    plain = _strategy("fedadam")
    at_round_3 = _one_round(plain, 3)
    resumed = _strategy("fedadam")
    resumed.round_offset = 2
    resumed_out = _one_round(resumed, 1)
    for name in SHAPES:
        np.testing.assert_array_equal(resumed_out[name], at_round_3[name])
    fresh = _one_round(_strategy("fedadam"), 1)
    assert not np.array_equal(fresh["head.weight"], at_round_3["head.weight"])


def test_optimizer_state_round_trip_changes_the_next_step():
    first = _strategy("fedadam")
    _one_round(first, 1)
    state = first.optimizer_state()
    assert {k.split("/")[0] for k in state} == {"m_t", "v_t"}
    restored, dropped = _strategy("fedadam"), _strategy("fedadam")
    restored.load_optimizer_state(state)
    a, b = _one_round(restored, 2), _one_round(dropped, 2)
    assert not np.array_equal(a["head.weight"], b["head.weight"])
    assert _strategy("fedavg").optimizer_state() == {}


class _Grid:
    """The two connected nodes a sampling sees (no SuperLink)."""

    def get_node_ids(self):
        return [11, 12]


def _npy_bytes(tensors: dict[str, np.ndarray]) -> int:
    """What ArrayRecord.count_bytes() counts, computed apart: each tensor's .npy file + name."""
    import io

    total = 0
    for name, value in tensors.items():
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        total += len(buf.getvalue()) + len(name)
    return total


def test_train_and_evaluate_broadcasts_are_counted_exactly():
    """Every node gets the global model twice per round (train, evaluate); each broadcast is
    counted at its exact payload (fp32 downlink: the tensors' npy bytes + names). Mutants:
    configure_evaluate passing no counter (the old zero), or counting one node only -> fail."""
    from flwr.app import ConfigRecord

    strategy = _strategy("fedavg")
    strategy.fraction_evaluate = 1.0
    global_model = _tensors(0.25)
    arrays = wire.to_record(global_model)
    per_node = _npy_bytes(global_model)
    assert per_node == sum(len(k) for k in SHAPES) + 2 * 128 + 4 * (6 + 4)  # npy v1 headers
    sent = list(strategy.configure_train(1, arrays, ConfigRecord(), _Grid()))
    assert sorted(m.metadata.dst_node_id for m in sent) == [11, 12]
    assert strategy.ledger.down == {11: per_node, 12: per_node}
    sent = list(strategy.configure_evaluate(1, arrays, ConfigRecord(), _Grid()))
    assert len(sent) == 2
    assert all(m.content["arrays"].count_bytes() == per_node for m in sent)
    entry = strategy.ledger.pop()
    assert entry["bytes_down_evaluate"] == 2 * per_node
    assert strategy.ledger.pop()["bytes_down_evaluate"] == 0  # popped: counted once
