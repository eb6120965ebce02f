"""No aggregate from fewer than fl.min_sites usable replies (training and evaluation), and the
DP wrappers noise the plain mean of the replies actually aggregated."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedprostate.config import RunConfig
from fedprostate.fl import wire
from fedprostate.fl.strategies import REPORT_KEY, make_strategy

SHAPES = {"blocks.0.lora_A": (2, 3), "head.weight": (4,)}


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _strategy(**dotted):
    cfg = RunConfig.from_flat({"fl.strategy": "fedavg", "fl.min_train_nodes": 2, **dotted})
    strategy = make_strategy(cfg, num_clients=5)
    strategy.attach(SHAPES, "fp32", seed=0, foundation_sha="abc")
    strategy.reference = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    strategy.current_arrays = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    strategy.after_broadcast(strategy.reference)
    return strategy


def _reply(node: int, value: float, phase: str = "train") -> Message:
    sent = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=node,
        message_type=phase,
    )
    if phase == "train":
        metrics = {"num-examples": 10, "train-loss": 0.5, "val-auroc": 0.7, "val-n": 4, "steps": 2}
        content = RecordDict(
            {
                "arrays": wire.to_record(
                    {k: np.full(s, value, np.float32) for k, s in SHAPES.items()}
                ),
                "metrics": MetricRecord(metrics),
                REPORT_KEY: ConfigRecord({"site": f"site{node}", "codec": "fp32"}),
            }
        )
    else:
        metrics = {"num-examples": 10, "auroc": 0.7, "ap": 0.5, "loss": 0.5}
        content = RecordDict(
            {"metrics": MetricRecord(metrics), REPORT_KEY: ConfigRecord({"site": f"site{node}"})}
        )
    return Message(content, reply_to=sent)


def test_fewer_replies_than_min_sites_are_not_aggregated():
    strategy = _strategy()  # fl.min_sites = 3 by default
    assert strategy.aggregate_train(1, [_reply(1, 1.0), _reply(2, 3.0)]) == (None, None)
    assert "fewer than fl.min_sites = 3" in strategy.ledger.notes[-1]
    arrays, _ = strategy.aggregate_train(1, [_reply(1, 1.0), _reply(2, 3.0), _reply(3, 5.0)])
    np.testing.assert_allclose(wire.from_record(arrays)["head.weight"], 3.0)


def test_evaluation_from_too_few_sites_is_not_aggregated():
    strategy = _strategy()
    assert (
        strategy.aggregate_evaluate(1, [_reply(1, 0, "evaluate"), _reply(2, 0, "evaluate")]) is None
    )
    replies = [_reply(n, 0, "evaluate") for n in (1, 2, 3)]
    assert strategy.aggregate_evaluate(1, replies) is not None


def test_sampling_never_asks_for_fewer_than_min_sites():
    strategy = _strategy(**{"fl.min_sites": 4})
    assert strategy.min_train_nodes == strategy.min_evaluate_nodes == 4


def test_server_side_dp_clips_each_update_and_noises_the_mean_of_the_replies(monkeypatch):
    import flwr.serverapp.strategy.dp_fixed_clipping as flower_dp

    added: list[float] = []
    real = flower_dp.add_gaussian_noise_inplace
    monkeypatch.setattr(
        flower_dp, "add_gaussian_noise_inplace", lambda a, std: (added.append(std), real(a, std))
    )
    np.random.seed(0)  # Flower draws the noise from NumPy's global generator
    strategy = _strategy(
        **{
            "privacy.client": "server-fixed",
            "privacy.noise_multiplier": 0.0,
            "privacy.clip_norm": 1.0,
        }
    )
    # (an update of exactly zero makes Flower's clipping divide by zero: near zero instead)
    replies = [_reply(1, 10.0), _reply(2, 10.0), _reply(3, 1e-6), _reply(4, 1e-6)]
    arrays, _ = strategy.aggregate_train(1, replies)
    out = wire.from_record(arrays)
    norm = float(np.sqrt(sum(float((v**2).sum()) for v in out.values())))
    # two updates clipped to norm 1, two ~zero, equal weights: the mean has norm 0.5
    assert norm == pytest.approx(0.5, rel=1e-4)
    dp = strategy.ledger.extra["dp"]
    assert dp["replies"] == 4 and dp["noise_std"] == 0.0
    noisy = _strategy(**{"privacy.client": "server-fixed", "privacy.noise_multiplier": 2.0})
    noisy.aggregate_train(1, replies[:3])
    # z C / m with m = the 3 replies aggregated (Flower would use the 5 sampled: under-noised)
    assert added[-1] == noisy.ledger.extra["dp"]["noise_std"] == pytest.approx(2.0 * 1.0 / 3)
