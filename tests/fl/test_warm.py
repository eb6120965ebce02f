"""The warm site process: the same replies as a cold ClientApp process, one process for many
messages, errors keep their rule (public text passes, private errors only by type), idle exit."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedprostate.engine import setup
from fedprostate.fl import client_app, warm, wire
from fedprostate.fl.client_app import make_client_app
from fedprostate.fl.site import PublicError, SiteContext
from fl_fixtures import tiny_config, write_tiny_cache

pytestmark = pytest.mark.slow
IDLE_S = 6.0


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _message(kind: str, bundle, sha=None) -> Message:
    """A server message as in tests/fl/test_what_leaves_a_site.py."""
    config = ConfigRecord(
        {
            "server-round": 1,
            "downlink": "fp32",
            "foundation-sha256": bundle.foundation_sha256 if sha is None else sha,
        }
    )
    arrays = wire.to_record(bundle.initial_communicated)  # not the (trained) cached model
    return Message(
        RecordDict({"arrays": arrays, "config": config}), dst_node_id=7, message_type=kind
    )


def _context(state, cache, warm_s=0.0) -> Context:
    node_config = {"site": "siteA", "cache": str(cache), "state-dir": str(state)}
    if warm_s:
        node_config["warm-seconds"] = warm_s
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def test_warm_process_answers_like_a_cold_one_and_goes_away_when_idle(tmp_path, monkeypatch):
    cache = write_tiny_cache(tmp_path / "cache")
    cfg = tiny_config(cache, **{"train.threads": 1})
    bundle = setup.build_model(cfg)
    app = make_client_app(cfg.to_flat())
    cold = app(_message("train", bundle), _context(tmp_path / "cold", cache))

    calls = []
    real_call = warm.call
    monkeypatch.setattr(warm, "call", lambda *a, **k: calls.append(a) or real_call(*a, **k))
    state = tmp_path / "warm"
    ctx = _context(state, cache, warm_s=IDLE_S)
    hot = app(_message("train", bundle), ctx)
    assert len(calls) == 1, "warm-seconds > 0 must route the message to the warm process"
    assert not hot.has_error(), hot.error
    a, b = wire.from_record(cold.content["arrays"]), wire.from_record(hot.content["arrays"])
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert dict(cold.content["metrics"]) == pytest.approx(dict(hot.content["metrics"]), nan_ok=True)
    assert (state / "siteA" / "audit.jsonl").is_file()  # audited in the ClientApp process

    key = (state / "siteA" / warm.KEY_FILE).read_bytes()
    evaluated = app(_message("evaluate", bundle), ctx)
    assert not evaluated.has_error() and evaluated.content["metrics"]["num-examples"] > 0
    assert (state / "siteA" / warm.KEY_FILE).read_bytes() == key  # the same warm process

    with pytest.raises(PublicError, match="differs from the server's"):  # its text passes
        app(_message("train", bundle, sha="0" * 64), ctx)

    # Any other error in the warm process (here: no tensors received): only its type comes back.
    with pytest.raises(warm.RemoteError) as err:
        client_app._run("train", {}, ctx, _site(state), server_round=1, received={}, kwargs={})
    assert str(err.value).isidentifier() and str(err.value) == err.value.type_name
    assert "warm process: train failed" in (state / "siteA" / warm.LOG_FILE).read_text("utf-8")

    deadline = time.monotonic() + IDLE_S + 10
    while (state / "siteA" / warm.KEY_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (state / "siteA" / warm.KEY_FILE).exists(), "the idle warm process did not exit"
    assert not os.path.exists(warm.socket_path(state / "siteA"))


def _site(state):
    return SiteContext("siteA", state / "siteA", "fp32")
