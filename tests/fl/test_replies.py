"""No single reply ends a run, and a reply is from the site its node was registered as.

Each test names the finding of issue 16 it covers; on the code before it, each of these either
raised out of the strategy (ending the ServerApp) or aggregated a lie.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from test_faults import SHAPES, _reply, _strategy, _tensors, server_identity, train_metrics  # noqa: F401

from fedprostate.fl import wire
from fedprostate.fl.registry import RegistryError, SiteRegistry, register_site
from fedprostate.fl.strategies import REPORT_KEY


def _registry(tmp_path, **sizes) -> SiteRegistry:
    path = tmp_path / "sites.json"
    for node, (site, train, val) in sizes.items():
        register_site(path, int(node.removeprefix("n")), site, train, val)
    return SiteRegistry.load(path)


def _registered(tmp_path, name="fedavg"):
    strategy = _strategy(name)
    strategy.registry = _registry(
        tmp_path, n1=("siteA", 10, 4), n2=("siteB", 30, 4), n3=("siteC", 20, 4)
    )
    return strategy


def test_an_extra_metric_is_rejected_not_a_crash():
    """Finding 3: an extra metric key made Flower raise InconsistentMessageReplies."""
    strategy = _strategy("fedavg")
    odd = _reply(2, "siteB", _tensors(9.0), metrics=train_metrics(10, **{"dp-epsilon": 1.0}))
    arrays, _ = strategy.aggregate_train(1, [_reply(1, "siteA", _tensors(1.0)), odd])
    np.testing.assert_allclose(wire.from_record(arrays)["head.weight"], 1.0)
    [rejected] = strategy.ledger.rejected
    assert rejected["site"] == "siteB" and "unexpected metric" in rejected["reason"]


def test_a_metric_named_site_cannot_rename_the_sender():
    """Finding 3: a metric named `site` overwrote the recorded site name."""
    strategy = _strategy("fedavg")
    liar = _reply(2, "siteB", _tensors(3.0), metrics=train_metrics(10, site=7.0))
    strategy.aggregate_train(1, [_reply(1, "siteA", _tensors(1.0)), liar])
    assert [c["site"] for c in strategy.ledger.clients] == ["siteA"]
    assert strategy.ledger.rejected[0]["site"] == "siteB"


def test_a_reply_must_come_from_the_node_registered_for_its_site(tmp_path):
    """Finding 2: a reply could claim any site name (two replies both named siteA)."""
    strategy = _registered(tmp_path)
    replies = [
        _reply(1, "siteA", _tensors(1.0)),
        _reply(2, "siteA", _tensors(50.0)),  # node 2 is siteB
        _reply(9, "siteC", _tensors(50.0)),  # node 9 is nobody
        _reply(3, "siteC", _tensors(3.0)),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert [c["site"] for c in strategy.ledger.clients] == ["siteA", "siteC"]
    reasons = {r["node"]: r["reason"] for r in strategy.ledger.rejected}
    assert "registered as 'siteB' but claims 'siteA'" in reasons[2]
    assert "node 9 is not in the site registry" in reasons[9]
    np.testing.assert_allclose(wire.from_record(arrays)["head.weight"], 2.0, rtol=1e-6)


def test_two_replies_claiming_one_site_in_simulation():
    strategy = _strategy("fedavg")
    strategy.registry = SiteRegistry.by_name({"siteA": {"train": 10, "val": 4}})
    arrays, _ = strategy.aggregate_train(
        1, [_reply(1, "siteA", _tensors(1.0)), _reply(2, "siteA", _tensors(7.0))]
    )
    np.testing.assert_allclose(wire.from_record(arrays)["head.weight"], 1.0)
    assert "second reply claiming site 'siteA'" in strategy.ledger.rejected[0]["reason"]


def test_num_examples_is_capped_at_the_registered_training_size(tmp_path):
    """Finding 2: num-examples = 1e12 made the global model equal the attacker's."""
    strategy = _registered(tmp_path)
    replies = [_reply(1, "siteA", _tensors(0.0), n=10), _reply(2, "siteB", _tensors(4.0), n=10**12)]
    arrays, _ = strategy.aggregate_train(1, replies)
    # siteB weighs its registered 30, not 1e12: (0*10 + 4*30) / 40
    np.testing.assert_allclose(wire.from_record(arrays)["head.weight"], 3.0, rtol=1e-6)
    entry = next(c for c in strategy.ledger.clients if c["site"] == "siteB")
    assert entry["num-examples"] == 30 and entry["num-examples-claimed"] == 1e12


def test_huge_counts_cannot_zero_the_model():
    """Finding 2: two replies with n = 1e308 turned the global model into zeros."""
    strategy = _strategy("fedavg")
    replies = [
        _reply(1, "siteA", _tensors(1.0), n=1e308),
        _reply(2, "siteB", _tensors(3.0), n=1e308),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(wire.from_record(arrays)["head.weight"], 2.0)


def _eval_reply(node: int, site: str, n, auroc: float = 0.5, **extra) -> Message:
    sent = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=node,
        message_type="evaluate",
    )
    metrics = {"num-examples": n, "auroc": auroc, "ap": 0.5, "loss": 0.7, **extra}
    content = RecordDict(
        {"metrics": MetricRecord(metrics), REPORT_KEY: ConfigRecord({"site": site})}
    )
    return Message(content, reply_to=sent)


def test_evaluation_counts_are_validated_like_training_counts():
    """Finding 3: n = -9 gave an aggregated AUROC of 7.1; +10/-10 divided by zero."""
    strategy = _strategy("fedavg")
    out = strategy.aggregate_evaluate(
        1, [_eval_reply(1, "siteA", 10, auroc=0.8), _eval_reply(2, "siteB", -9, auroc=0.1)]
    )
    assert out["auroc"] == pytest.approx(0.8)
    out = strategy.aggregate_evaluate(
        1, [_eval_reply(1, "siteA", 10, auroc=0.6), _eval_reply(2, "siteB", -10, auroc=0.9)]
    )
    assert out["auroc"] == pytest.approx(0.6)
    rejected = [r for r in strategy.ledger.rejected if r["phase"] == "evaluate"]
    assert [r["site"] for r in rejected] == ["siteB", "siteB"]
    assert all("bad num-examples" in r["reason"] for r in rejected)
    out = strategy.aggregate_evaluate(
        1, [_eval_reply(1, "siteA", 10, auroc=0.6), _eval_reply(2, "siteB", 5, extra=1.0)]
    )
    assert out["auroc"] == pytest.approx(0.6)  # an extra eval metric: that reply only


def test_an_aggregation_error_drops_only_the_reply_that_causes_it(caplog):
    """Finding 3: any exception inside the strategy's aggregation ended the ServerApp."""
    strategy = _strategy("fedavg")

    def picky(contents, key):  # a metrics aggregator that fails on one site's values
        if any(next(iter(c.metric_records.values()))["train-loss"] == 13.0 for c in contents):
            raise ZeroDivisionError("boom")
        return MetricRecord({"train-loss": 0.5})

    strategy.train_metrics_aggr_fn = picky
    bad = _reply(2, "siteB", _tensors(9.0), metrics={**train_metrics(10), "train-loss": 13.0})
    arrays, _ = strategy.aggregate_train(1, [_reply(1, "siteA", _tensors(1.0)), bad])
    np.testing.assert_allclose(wire.from_record(arrays)["head.weight"], 1.0)
    [rejected] = strategy.ledger.rejected
    assert rejected["site"] == "siteB" and "ZeroDivisionError: boom" in rejected["reason"]
    assert [c["site"] for c in strategy.ledger.clients] == ["siteA"]
    # Every reply failing: the round is dropped, the run goes on.
    strategy.train_metrics_aggr_fn = lambda contents, key: 1 / 0
    assert strategy.aggregate_train(2, [_reply(1, "siteA", _tensors(1.0))]) == (None, None)
    assert any("aggregation failed" in note for note in strategy.ledger.notes)


def test_registry_files_are_checked(tmp_path):
    path = tmp_path / "sites.json"
    register_site(path, 5, "siteA", 10, 4)
    with pytest.raises(RegistryError, match="already registered as node 5"):
        register_site(path, 6, "siteA", 10, 4)
    register_site(path, 5, "siteA", 12, 4)  # the same node again: updated, not duplicated
    assert json.loads(path.read_text(encoding="utf-8"))["nodes"]["5"]["train"] == 12
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(RegistryError, match="bad.json"):
        SiteRegistry.load(tmp_path / "bad.json")
