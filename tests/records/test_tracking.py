"""Tracking: what the recorder writes is read back by TensorBoard's and MLflow's own readers."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from fedprostate.records.run_folder import Checkpoint, RunRecorder
from fedprostate.records.tracking import (
    Tracking,
    TrackingError,
    check_available,
    flatten_round,
    log_artifacts,
    open_tracking,
)

ROUNDS = [
    {"round": 0, "time_s": 0.1, "val": {"auroc": 0.5, "ap": 0.4}, "test": {"auroc": 0.52}},
    {
        "round": 1,
        "time_s": 1.0,
        "clients": [
            {"site": "siteA", "node": 7, "codec": "int8", "bytes_up": 1000, "bytes_down": 4000},
            {"site": "siteB", "node": 9, "codec": "fp32", "bytes_up": 4000, "bytes_down": 4000},
        ],
        "rejected": [{"site": "siteC", "reason": "nan"}],
        "fed_eval": [{"site": "siteA", "auroc": 0.7}],
        "val": {"auroc": 0.8, "ap": float("nan")},
        "test": {"auroc": 0.75},
    },
    {"round": 2, "time_s": 2.0, "val": {"auroc": 0.7}, "test": {"auroc": 0.78}},
]
SUMMARY = {"kind": "federated", "status": "finished", "rounds": 2, "method": "lora",
           "arch": "swin_test", "wall_s": 2.0, "test_auroc": 0.75}  # fmt: skip


def _points(events) -> list[tuple[int, float]]:
    return [(e.step, round(e.value, 6)) for e in events]


def _record(run, tracking: Tracking) -> RunRecorder:
    recorder = RunRecorder(run, tracking)
    recorder.write_config("seed = 0\n[fl]\nrounds = 2\n", {"seed": 0, "fl.rounds": 2})
    for entry in ROUNDS:
        recorder.append_round(entry)
    recorder.write_summary(SUMMARY)
    return recorder


def test_flatten_round_names_per_site_numbers():
    flat = flatten_round(ROUNDS[1])
    assert flat["site/siteA/bytes_up"] == 1000 and flat["site/siteB/bytes_down"] == 4000
    assert flat["val/auroc"] == 0.8 and "val/ap" not in flat  # NaN is left out, not logged
    assert flat["fed_eval/siteA/auroc"] == 0.7 and flat["rejected_replies"] == 1
    assert "round" not in flat and not any("node" in k or "codec" in k for k in flat)
    local = flatten_round({"round": 1, "client": "siteB", "val": {"auroc": 0.6}})
    assert local == {"local/siteB/val/auroc": 0.6}


def test_tensorboard_reads_the_rounds(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    _record(run, open_tracking(run, tensorboard=True))
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert _points(events.Scalars("val/auroc")) == [(0, 0.5), (1, 0.8), (2, 0.7)]
    assert [e.value for e in events.Scalars("site/siteA/bytes_up")] == [1000]
    assert {"config/text_summary", "summary/text_summary"} <= set(events.Tags()["tensors"])
    assert (
        json.loads((run / "tracking.json").read_text(encoding="utf-8"))["tensorboard"]
        == "tensorboard"
    )


def test_tensorboard_resume_drops_the_rounds_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    _record(run, open_tracking(run, tensorboard=True))
    again = RunRecorder(run, open_tracking(run, tensorboard=True, resume_after=1))
    again.append_round({"round": 2, "val": {"auroc": 0.9}})
    again.tracking.close()
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert _points(events.Scalars("val/auroc")) == [(0, 0.5), (1, 0.8), (2, 0.9)]


@pytest.fixture()
def mlflow_client():
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    return MlflowClient


def _only_run(client, experiment="fedprostate"):
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return run


def test_mlflow_local_sqlite_store_params_metrics_summary_and_artifacts(
    tmp_path, monkeypatch, mlflow_client
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    run = tmp_path / "runs" / "fed"
    _record(run, open_tracking(run, mlflow=True))
    state = json.loads((run / "tracking.json").read_text(encoding="utf-8"))["mlflow"]
    assert state["uri"] == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = mlflow_client(tracking_uri=state["uri"])
    logged = _only_run(client)
    assert logged.info.run_id == state["run_id"] and logged.info.run_name == "fed"
    assert logged.info.status == "FINISHED"
    assert logged.data.params == {"seed": "0", "fl.rounds": "2"}
    history = client.get_metric_history(state["run_id"], "val/auroc")
    assert _points(history) == [(0, 0.5), (1, 0.8), (2, 0.7)]
    assert logged.data.metrics["site/siteB/bytes_up"] == 4000
    assert logged.data.metrics["summary/test_auroc"] == 0.75
    # the report and the bundle, written later by other commands, join the same run
    (run / "report.html").write_text("<html></html>")
    (run / "bundle").mkdir()
    (run / "bundle" / "bundle.json").write_text("{}")
    assert log_artifacts(run, [run / "report.html"], "report")
    assert log_artifacts(run, [run / "bundle"], "bundle")
    names = {a.path for a in client.list_artifacts(state["run_id"])}
    assert {"config.toml", "summary.json", "report", "bundle"} <= names
    assert [a.path for a in client.list_artifacts(state["run_id"], "bundle")] == [
        "bundle/bundle.json"
    ]
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # not ./mlruns in the working folder


def test_mlflow_file_store_with_the_env_flag_and_resume_in_the_same_run(
    tmp_path, monkeypatch, mlflow_client
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = tmp_path / "fed"
    tracking = open_tracking(run, mlflow=True, experiment="exp1")
    recorder = RunRecorder(run, tracking)
    recorder.write_config("seed = 0\n", {"seed": 0})
    recorder.append_round(ROUNDS[0])
    first = json.loads((run / "tracking.json").read_text(encoding="utf-8"))["mlflow"]
    assert first["uri"] == (tmp_path / "mlruns").as_uri()
    resumed = RunRecorder(run, open_tracking(run, mlflow=True, experiment="exp1", resume_after=0))
    resumed.write_config("seed = 0\n", {"seed": 0})  # params already there: not an error
    resumed.append_round(ROUNDS[1])
    resumed.write_summary(SUMMARY)
    client = mlflow_client(tracking_uri=first["uri"])
    logged = _only_run(client, "exp1")
    assert logged.info.run_id == first["run_id"] and logged.info.status == "FINISHED"
    history = client.get_metric_history(first["run_id"], "val/auroc")
    assert [m.step for m in history] == [0, 1]


def test_a_failing_tracker_is_dropped_with_a_warning(tmp_path, caplog, monkeypatch):
    # import-linter (tests/test_layers.py) disables existing loggers when it configures logging
    monkeypatch.setattr(logging.getLogger("fedprostate.tracking"), "disabled", False)

    class Broken:
        def log_metrics(self, metrics, step):
            raise ConnectionError("server went away")

    tracking = Tracking([Broken()])
    recorder = RunRecorder(tmp_path, tracking)
    with caplog.at_level(logging.WARNING, logger="fedprostate.tracking"):
        recorder.append_round(ROUNDS[0])
        recorder.append_round(ROUNDS[1])
    assert tracking.trackers == [] and caplog.text.count("server went away") == 1
    assert len(recorder.read_rounds()) == 2  # the run's own files go on


def test_missing_library_is_named_before_the_run(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name)
    )
    with pytest.raises(TrackingError, match=r"fedprostate\[tracking\]"):
        check_available(False, True)
    check_available(False, False)


def test_prune_keeps_the_newest_rounds_and_the_best(tmp_path):
    recorder = RunRecorder(tmp_path)
    aurocs = {1: 0.6, 2: 0.9, 3: 0.7, 4: 0.8, 5: 0.75}
    for r, auc in aurocs.items():
        recorder.append_round({"round": r, "val": {"auroc": auc}})
        recorder.save_checkpoint(
            Checkpoint(r, {"w": np.full(2, r, np.float32)}, {"m": np.zeros(1)}, {})
        )
        recorder.prune_checkpoints(2)
    assert recorder.checkpoint_rounds() == [2, 4, 5]
    assert sorted(p.name for p in recorder.ckpt_dir.iterdir()) == [
        f"round_{r:04d}{s}" for r in (2, 4, 5) for s in (".json", ".safetensors",
                                                         "_strategy.safetensors")
    ]  # fmt: skip
    assert recorder.latest_checkpoint().round == 5
    assert recorder.prune_checkpoints(0) == []  # 0 keeps every round
