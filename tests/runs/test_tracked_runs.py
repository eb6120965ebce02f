"""Runs with tracking on: the server/baseline loop streams to TensorBoard and MLflow, the report
and the bundle join the MLflow run, and ``keep_last`` prunes the federated checkpoints."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedprostate.cli import app
from fedprostate.runs.export import export_run
from fedprostate.runs.pooled import centralize
from fl_fixtures import tiny_config, write_tiny_cache


def _scalars(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.slow
def test_tracked_centralized_run_report_and_bundle(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cache = write_tiny_cache(
        tmp_path / "cache", sites=("siteA", "siteB"), seed=4
    )  # both classes in val
    cfg = tiny_config(cache, **{"track.tensorboard": True, "track.mlflow": True,
                                "track.experiment": "tiny"})  # fmt: skip
    run = tmp_path / "runs" / "central"
    summary = centralize(cfg, run)
    assert [s for s, _ in _scalars(run / "tensorboard", "val/auroc")] == [1, 2]
    state = json.loads((run / "tracking.json").read_text(encoding="utf-8"))["mlflow"]
    client = MlflowClient(tracking_uri=state["uri"])
    logged = client.get_run(state["run_id"])
    assert logged.info.status == "FINISHED" and logged.data.params["model.arch"] == "swin_test"
    assert logged.data.metrics["summary/test_auroc"] == pytest.approx(summary["test_auroc"])

    result = CliRunner().invoke(app, ["report", str(run), "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    assert (run / "plots" / "pr.png").is_file()  # the PR curve beside the ROC
    export_run(run, run / "bundle", formats=("bundle",), n_boot=20)
    artifacts = {a.path for a in client.list_artifacts(state["run_id"])}
    assert {"report", "bundle", "config.toml", "summary.json"} <= artifacts
    report = {a.path for a in client.list_artifacts(state["run_id"], "report")}
    assert report == {"report/report.html", "report/report.md"}


@pytest.mark.slow
def test_federated_run_streams_per_site_bytes_and_keeps_last_and_best(tmp_path):
    pytest.importorskip("tensorboard")
    from fedprostate.runs.federated import federate

    cache = write_tiny_cache(
        tmp_path / "cache", sites=("siteA", "siteB"), seed=4
    )  # both classes in val
    cfg = tiny_config(cache, **{"fl.rounds": 3, "keep_last": 1, "track.tensorboard": True})
    run = tmp_path / "fed"
    federate(cfg, run)
    lines = [
        json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    scored = [e for e in lines if e["round"] > 0]
    best = max(scored, key=lambda e: e["val"]["auroc"])["round"]
    kept = sorted(int(p.stem[6:]) for p in (run / "checkpoints").glob("round_*.json"))
    assert kept == sorted({best, 3})
    for site in ("siteA", "siteB"):
        up = _scalars(run / "tensorboard", f"site/{site}/bytes_up")
        assert [s for s, _ in up] == [1, 2, 3] and all(v > 0 for _, v in up)
    assert [s for s, _ in _scalars(run / "tensorboard", "test/auroc")] == [0, 1, 2, 3]
