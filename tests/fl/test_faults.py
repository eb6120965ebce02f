"""Malformed replies are filtered before Flower's strategy sees them, with the site named.

Without the filter Flower 1.42 raises ``InconsistentMessageReplies`` (or averages garbage) and
the run ends; with it the round goes on with the well-formed replies.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedprostate.config import RunConfig
from fedprostate.fl import wire
from fedprostate.fl.strategies import REPORT_KEY, make_strategy

SHAPES = {"blocks.0.lora_A": (2, 3), "head.weight": (4,)}


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _strategy(name: str):
    cfg = RunConfig.from_flat({"fl.strategy": name, "fl.min_train_nodes": 2})
    strategy = make_strategy(cfg, num_clients=10)
    strategy.attach(SHAPES, "fp32", seed=0, foundation_sha="abc")
    strategy.reference = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    # What configure_train would have recorded: the global model broadcast this round.
    strategy.current_arrays = _tensors(0.0)
    return strategy


def _tensors(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, np.float32) for k, s in SHAPES.items()}


def train_metrics(n=10, **extra) -> dict:
    """What a real site's training reply carries (fl.client.train_round)."""
    return {"num-examples": n, "train-loss": 0.5, "val-auroc": 0.7, "val-n": 4, "steps": 2, **extra}


def _reply(
    node: int,
    site: str,
    tensors: dict,
    n: int = 10,
    codec: str = "fp32",
    metrics: dict | None = None,
) -> Message:
    sent = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=node,
        message_type="train",
    )
    content = RecordDict(
        {
            "arrays": wire.to_record(tensors),
            "metrics": MetricRecord(train_metrics(n) if metrics is None else metrics),
            REPORT_KEY: ConfigRecord({"site": site, "codec": codec}),
        }
    )
    return Message(content, reply_to=sent)


def _bad_replies() -> dict[str, Message]:
    good = _tensors(5.0)
    missing = {k: v for k, v in good.items() if k != "head.weight"}
    extra = {**good, "blocks.0.norm.weight": np.ones(3, np.float32)}
    shape = {**good, "head.weight": np.ones(5, np.float32)}
    dtype = {**good, "head.weight": np.ones(4, np.float64)}
    nan = {**good, "head.weight": np.array([1, np.nan, 1, 1], np.float32)}
    inf = {**good, "blocks.0.lora_A": np.full((2, 3), np.inf, np.float32)}
    return {
        "site_missing": _reply(3, "site_missing", missing),
        "site_extra": _reply(4, "site_extra", extra),
        "site_shape": _reply(5, "site_shape", shape),
        "site_dtype": _reply(6, "site_dtype", dtype),
        "site_nan": _reply(7, "site_nan", nan),
        "site_inf": _reply(8, "site_inf", inf),
        "site_codec": _reply(9, "site_codec", {"junk": np.zeros(3, np.uint8)}, codec="int4"),
        "site_zero_n": _reply(10, "site_zero_n", good, n=0),
    }


EXPECTED_REASON = {
    "site_missing": "missing tensors",
    "site_extra": "unexpected tensors",
    "site_shape": "has shape (5,)",
    "site_dtype": "dtype float64",
    "site_nan": "NaN or Inf",
    "site_inf": "NaN or Inf",
    "site_codec": "undecodable int4",
    "site_zero_n": "bad num-examples",
}


@pytest.mark.parametrize("strategy_name", ["fedavg", "fedadam"])
def test_malformed_replies_are_filtered_and_the_rest_aggregated(strategy_name, caplog):
    strategy = _strategy(strategy_name)
    good = [_reply(1, "siteA", _tensors(1.0), n=10), _reply(2, "siteB", _tensors(4.0), n=30)]
    bad = _bad_replies()
    replies = [good[0], *bad.values(), good[1]]
    with caplog.at_level(logging.WARNING, logger="fedprostate.server"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    result = wire.from_record(arrays)
    assert set(result) == set(SHAPES)
    for name, arr in result.items():
        assert arr.dtype == np.float32 and arr.shape == SHAPES[name]
        assert np.isfinite(arr).all()
    if strategy_name == "fedavg":  # weighted by num-examples: (1*10 + 4*30) / 40
        for arr in result.values():
            np.testing.assert_allclose(arr, 3.25, rtol=1e-6)
    accepted = [c["site"] for c in strategy.ledger.clients]
    assert accepted == ["siteA", "siteB"]
    rejected = {r["site"]: r["reason"] for r in strategy.ledger.rejected}
    assert set(rejected) == set(bad)
    for site, fragment in EXPECTED_REASON.items():
        assert fragment in rejected[site], (site, rejected[site])
        assert any(
            site in rec.getMessage() and fragment in rec.getMessage() for rec in caplog.records
        )


def test_error_replies_are_filtered_and_logged():
    strategy = _strategy("fedavg")
    ok = _reply(1, "siteA", _tensors(2.0))
    sent = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=12,
        message_type="train",
    )
    failed = Message(Error(code=0, reason="site siteC: ValueError during training"), reply_to=sent)
    arrays, _ = strategy.aggregate_train(1, [ok, failed])
    np.testing.assert_allclose(wire.from_record(arrays)["head.weight"], 2.0)
    assert strategy.ledger.rejected[0]["node"] == 12
    assert "ValueError during training" in strategy.ledger.rejected[0]["reason"]


def test_no_usable_reply_keeps_the_global_model():
    strategy = _strategy("fedadam")
    bad = list(_bad_replies().values())
    assert strategy.aggregate_train(1, bad) == (None, None)
    assert len(strategy.ledger.rejected) == len(bad)
