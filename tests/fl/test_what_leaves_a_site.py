"""What leaves a hospital: every reply of the ClientApp, inspected in-process.

The handlers are called exactly as Flower's SuperNode calls them (``app(message, context)``);
the error reason is rebuilt as Flower's ``run_clientapp`` builds it from the raised exception.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedprostate.data.cache import load_index
from fedprostate.engine import setup
from fedprostate.fl import client as client_module
from fedprostate.fl import wire
from fedprostate.fl.client_app import make_client_app
from fedprostate.fl.strategies import REPORT_KEY
from fl_fixtures import tiny_config, write_tiny_cache

SITE = "siteA"
ALLOWED_METRICS = {
    "num-examples",
    "train-loss",
    "val-auroc",
    "val-n",
    "steps",
    "auroc",
    "ap",
    "loss",
}


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    """Messages are created as the ServerApp process creates them (its task identity set)."""
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


@pytest.fixture(scope="module")
def site_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("leaves")
    cache = write_tiny_cache(root / "cache")
    cfg = tiny_config(cache, **{"train.threads": 1})
    bundle = setup.build_model(cfg)
    return root, cache, cfg, bundle


def _message(kind: str, bundle, server_round=1, sha=None) -> Message:
    arrays = wire.to_record(setup.communicated_numpy(bundle.ft))
    config = ConfigRecord(
        {
            "server-round": server_round,
            "downlink": "fp32",
            "foundation-sha256": bundle.foundation_sha256 if sha is None else sha,
        }
    )
    return Message(
        RecordDict({"arrays": arrays, "config": config}), dst_node_id=7, message_type=kind
    )


def _context(root: Path, cache: Path) -> Context:
    node_config = {"site": SITE, "cache": str(cache), "state-dir": str(root / "state")}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _flower_reason(exc: Exception) -> str:
    """The error text Flower's SuperNode sends to the server for a raised exception."""
    return str(type(exc)) + ":<'" + str(exc) + "'>"


def _identifiers(cache: Path) -> set[str]:
    rows = load_index(cache)
    ids = {r["patient_id"] for r in rows} | {f"{r['patient_id']}_{r['study_id']}" for r in rows}
    return ids


def _all_strings(content: RecordDict) -> list[str]:
    out = list(content.keys())
    for record in content.values():
        out += list(record.keys())
        if isinstance(record, ConfigRecord | MetricRecord):
            out += [str(v) for v in record.values()]
    return out


def _check_scalar_metrics(metrics: MetricRecord) -> None:
    assert set(metrics) <= ALLOWED_METRICS, set(metrics) - ALLOWED_METRICS
    for key, value in metrics.items():
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert not isinstance(value, list), key


def test_train_reply_holds_only_communicated_tensors_and_scalars(site_run):
    root, cache, cfg, bundle = site_run
    app = make_client_app(cfg.to_flat())
    reply = app(_message("train", bundle), _context(root, cache))
    assert not reply.has_error()
    content = reply.content
    assert set(content.keys()) == {"arrays", "metrics", REPORT_KEY}
    arrays = content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    expected = setup.communicated_shapes(bundle.ft)
    assert list(arrays.keys()) == list(expected)  # the communicated set, nothing else
    for name, arr in wire.from_record(arrays).items():
        assert arr.shape == expected[name] and arr.dtype == np.float32
        assert np.isfinite(arr).all()
    _check_scalar_metrics(content["metrics"])
    assert content["metrics"]["num-examples"] > 0
    assert dict(content[REPORT_KEY]) == {"site": SITE, "codec": "fp32"}
    # No patient/study identifier and no path anywhere in what is sent.
    ids = _identifiers(cache)
    for text in _all_strings(content):
        assert not any(i in text for i in ids), text
        assert "/" not in text and str(root) not in text, text
    # Nothing trained-but-local travels (e.g. local norms stay at the site).
    assert not set(arrays.keys()) & set(bundle.ft.local)


def test_evaluate_reply_holds_only_scalar_metrics(site_run):
    root, cache, cfg, bundle = site_run
    app = make_client_app(cfg.to_flat())
    reply = app(_message("evaluate", bundle), _context(root, cache))
    content = reply.content
    assert set(content.keys()) == {"metrics", REPORT_KEY}
    assert not content.array_records
    _check_scalar_metrics(content["metrics"])
    assert dict(content[REPORT_KEY]) == {"site": SITE}
    ids = _identifiers(cache)
    assert not any(i in t for t in _all_strings(content) for i in ids)


def test_error_text_sent_to_server_has_no_ids_or_paths(site_run, monkeypatch, caplog):
    root, cache, cfg, bundle = site_run
    secret_path = str(cache / "sites" / "siteA.safetensors")

    def failing_train(*args, **kwargs):
        raise ValueError(f"corrupt crop of patient siteA-003 study 1 in {secret_path}")

    monkeypatch.setattr(client_module, "train_local", failing_train)
    app = make_client_app(cfg.to_flat())
    with caplog.at_level("ERROR", logger="fedprostate.site"):
        with pytest.raises(Exception) as info:
            app(_message("train", bundle), _context(root, cache))
    reason = _flower_reason(info.value)
    assert "siteA-003" not in reason and secret_path not in reason and "/" not in reason
    assert "ValueError" in reason and SITE in reason  # still says what and where
    # The full detail stays in the site's local log.
    assert "siteA-003" in caplog.text and secret_path in caplog.text


def test_foundation_hash_mismatch_is_refused_with_a_clear_message(site_run):
    root, cache, cfg, bundle = site_run
    app = make_client_app(cfg.to_flat())
    with pytest.raises(client_module.PublicError) as info:
        app(_message("train", bundle, sha="0" * 64), _context(root, cache))
    reason = _flower_reason(info.value)
    assert "foundation backbone" in reason and "differs from the server's" in reason
    assert bundle.foundation_sha256[:12] in reason and "000000000000" in reason
    with pytest.raises(client_module.PublicError):
        app(_message("evaluate", bundle, sha="f" * 64), _context(root, cache))
