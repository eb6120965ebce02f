"""Optional experiment tracking: what the run recorder writes, mirrored to TensorBoard and MLflow.

Server side only (as NVFlare does): every metrics.jsonl line becomes scalars at step = round
(``val/auroc``, ``test/ap``, ``site/<site>/bytes_up``, ``fed_eval/<site>/auroc``, ...), the run
configuration becomes parameters, the summary becomes final metrics, and the report and the
exported bundle become artifacts of the same MLflow run when they are written later
(:func:`log_artifacts`, which finds the run again through ``RUN/tracking.json``).

* TensorBoard: event files in ``RUN/tensorboard`` (``tensorboard --logdir RUN/tensorboard``);
  needs the ``tensorboard`` package.
* MLflow: the tracking URI given (a server, ``sqlite:///...``, ``file:...``); else
  ``$MLFLOW_TRACKING_URI``; else a local store beside the run folder, no server needed:
  ``sqlite:///<parent>/mlflow.db`` (artifacts in ``<parent>/mlartifacts``), or, when
  ``MLFLOW_ALLOW_FILE_STORE=true``, the file store ``<parent>/mlruns``. Needs ``mlflow-skinny``
  (or ``mlflow``).

Both come with ``pip install 'fedprostate[tracking]'``. A tracker that fails mid-run (a server
that went away) logs one warning and stops; the run and its own files go on.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("fedprostate.tracking")

STATE_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"
EXTRA = "pip install 'fedprostate[tracking]'"


class TrackingError(ValueError):
    """Tracking was asked for but cannot work (library missing, run not tracked)."""


def check_available(tensorboard: bool, mlflow: bool) -> None:
    """Raise :class:`TrackingError` naming the missing package before a run starts."""
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise TrackingError(f"track.tensorboard = true needs the tensorboard package: {EXTRA}")
    if mlflow and importlib.util.find_spec("mlflow") is None:
        raise TrackingError(f"MLflow tracking needs mlflow-skinny (or mlflow): {EXTRA}")


def flatten_round(entry: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one metrics.jsonl line as ``a/b/c`` scalar names (per-site by site name).

    A local-only run's lines carry ``client`` (each site trains its own model): their names
    start with ``local/<site>/``.
    """
    out: dict[str, float] = {}
    client = entry.get("client")
    if isinstance(client, str) and client != "pooled":
        inner = flatten_round({k: v for k, v in entry.items() if k != "client"})
        return {f"local/{client}/{k}": v for k, v in inner.items()}

    def put(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            out[prefix] = float(value)
        elif isinstance(value, int | float):
            if math.isfinite(float(value)):
                out[prefix] = float(value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                put(f"{prefix}/{k}", v)

    for key, value in entry.items():
        if key == "round":
            continue
        if key in ("clients", "fed_eval") and isinstance(value, list):
            group = "site" if key == "clients" else key
            for item in value:
                site = str(item.get("site", "unknown"))
                for k, v in item.items():
                    if k not in ("site", "node"):
                        put(f"{group}/{site}/{k}", v)
        elif key == "rejected" and isinstance(value, list):
            out["rejected_replies"] = float(len(value))
        else:
            put(key, value)
    return out


def local_mlflow_uri(run_dir: Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the default local store beside ``run_dir``."""
    parent = Path(run_dir).resolve().parent
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true", "yes"):
        return (parent / "mlruns").as_uri(), ""
    return f"sqlite:///{parent / 'mlflow.db'}", (parent / "mlartifacts").as_uri()


class TensorBoardTracker:
    def __init__(self, logdir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = logdir
        self.writer = SummaryWriter(str(logdir), purge_step=purge_step)

    def log_params(self, params: Mapping[str, Any], config_text: str = "") -> None:
        if config_text:
            self.writer.add_text("config", "```\n" + config_text + "\n```", 0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        text = json.dumps(summary, indent=2, default=str)
        self.writer.add_text("summary", "```\n" + text + "\n```", int(summary.get("rounds", 0)))
        self.writer.flush()

    def close(self, status: str = "finished") -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run, reached through ``MlflowClient`` (no global mlflow state)."""

    def __init__(self, uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.uri, self.run_id = uri, run_id
        self.client = MlflowClient(tracking_uri=uri)

    @classmethod
    def create(cls, uri: str, experiment: str, run_name: str, artifact_location: str = ""):
        """A new run in ``experiment`` (created when missing, with ``artifact_location``)."""
        tracker = cls(uri, "")
        exp = tracker.client.get_experiment_by_name(experiment)
        exp_id = (
            exp.experiment_id
            if exp is not None
            else tracker.client.create_experiment(
                experiment, artifact_location=artifact_location or None
            )
        )
        run = tracker.client.create_run(exp_id, run_name=run_name, tags={"fedprostate": "run"})
        tracker.run_id = run.info.run_id
        return tracker

    def log_params(self, params: Mapping[str, Any], config_text: str = "") -> None:
        from mlflow.entities import Param

        known = set(self.client.get_run(self.run_id).data.params)
        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in known]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])
        if config_text:
            self.client.log_text(self.run_id, config_text, "config.toml")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        numbers = {f"summary/{k}": v for k, v in flatten_round(summary).items()}
        self.log_metrics(numbers, int(summary.get("rounds", 0)))
        self.client.set_tag(self.run_id, "status", str(summary.get("status", "")))
        self.client.log_dict(self.run_id, dict(summary), "summary.json")

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str) -> None:
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    def close(self, status: str = "finished") -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status == "finished" else "FAILED")


class Tracking:
    """The trackers of one run; every call is safe (a failing tracker is dropped with a warning)."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def _each(self, method: str, *args) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # tracking must never end a training run
                log.warning("%s stopped: %s", type(tracker).__name__, exc)
                self.trackers.remove(tracker)

    def log_params(self, params: Mapping[str, Any], config_text: str = "") -> None:
        self._each("log_params", params, config_text)

    def log_round(self, entry: Mapping[str, Any]) -> None:
        self._each("log_metrics", flatten_round(entry), int(entry.get("round", 0)))

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        self._each("log_summary", summary)

    def close(self, status: str = "finished") -> None:
        self._each("close", status)


def open_tracking(
    run_dir: str | Path,
    tensorboard: bool = False,
    mlflow: bool = False,
    mlflow_uri: str = "",
    experiment: str = "fedprostate",
    resume_after: int | None = None,
) -> Tracking:
    """The run's trackers; ``RUN/tracking.json`` records where they write (and resumes them)."""
    run_dir = Path(run_dir)
    check_available(tensorboard, mlflow)
    state_path = run_dir / STATE_FILE
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    if resume_after is None:
        state = {}
    trackers: list = []
    if tensorboard:
        purge = resume_after + 1 if resume_after is not None else None
        trackers.append(TensorBoardTracker(run_dir / TENSORBOARD_DIR, purge_step=purge))
        state["tensorboard"] = TENSORBOARD_DIR
    if mlflow:
        uri, artifacts = (mlflow_uri, "") if mlflow_uri else _default_uri(run_dir)
        previous = state.get("mlflow", {})
        if previous.get("uri") == uri and previous.get("run_id"):
            tracker = MlflowTracker(uri, previous["run_id"])  # a resumed run goes on in it
            tracker.client.update_run(tracker.run_id, status="RUNNING")
        else:
            tracker = MlflowTracker.create(uri, experiment, run_dir.name, artifacts)
        trackers.append(tracker)
        state["mlflow"] = {"uri": uri, "experiment": experiment, "run_id": tracker.run_id}
    if trackers:
        run_dir.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    return Tracking(trackers)


def _default_uri(run_dir: Path) -> tuple[str, str]:
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    return (env, "") if env else local_mlflow_uri(run_dir)


def log_artifacts(run_dir: str | Path, paths: Iterable[str | Path], artifact_path: str) -> bool:
    """Add files or folders to the run's MLflow run (if it has one); True when logged.

    Never raises: the report or bundle is written either way, so a missing library or an
    unreachable server is one warning.
    """
    state_path = Path(run_dir) / STATE_FILE
    if not state_path.is_file():
        return False
    info = json.loads(state_path.read_text(encoding="utf-8")).get("mlflow")
    if not info:
        return False
    try:
        check_available(False, True)
        MlflowTracker(info["uri"], info["run_id"]).log_artifacts(
            [Path(p) for p in paths], artifact_path
        )
    except Exception as exc:  # the artifact itself is on disk already
        log.warning("%s not logged to MLflow run %s: %s", artifact_path, info.get("run_id"), exc)
        return False
    return True
