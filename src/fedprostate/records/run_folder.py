"""One folder per run: config.toml, metrics.jsonl, checkpoints/, predictions_*.csv, summary.json.

With a :class:`~fedprostate.records.tracking.Tracking`, every round line, the configuration and
the summary also go to TensorBoard / MLflow. ``prune_checkpoints`` keeps the newest rounds and
the best one on validation (``keep_last``).

Every file that a resume depends on is written atomically (temp file + rename), and a checkpoint
is complete before the round's metrics line is appended, so a crash at any point leaves a run
that ``--resume`` continues from the last completed round.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fedprostate.records import predictions
from fedprostate.records.tracking import Tracking

RUN_KINDS = ("federated", "centralized", "local", "federated-pretrain")
STATUSES = ("finished", "failed")
SUMMARY_KEYS = ("kind", "status", "rounds", "method", "arch", "wall_s")  # every summary


def check_summary(summary: dict[str, Any]) -> None:
    """The summary.json schema every run kind writes (raises ValueError naming the problem)."""
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise ValueError(f"run summary lacks {missing}")
    if summary["kind"] not in RUN_KINDS or summary["status"] not in STATUSES:
        raise ValueError(f"run summary kind/status {summary['kind']!r}/{summary['status']!r}")
    if summary["status"] == "failed" and not summary.get("reason"):
        raise ValueError("a failed run summary must say why (reason)")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_save_tensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]
    strategy_state: dict[str, np.ndarray]
    meta: dict[str, Any]


class RunRecorder:
    def __init__(self, run_dir: str | Path, tracking: Tracking | None = None):
        self.dir = Path(run_dir)
        self.ckpt_dir = self.dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.tracking = tracking or Tracking([])

    def write_config(self, toml_text: str, params: dict[str, Any] | None = None) -> None:
        atomic_write_text(self.dir / "config.toml", toml_text)
        self.tracking.log_params(params or {}, toml_text)

    # ---- per round -----------------------------------------------------------------------
    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        stem = self.ckpt_dir / f"round_{ckpt.round:04d}"
        atomic_save_tensors(stem.with_suffix(".safetensors"), ckpt.arrays)
        if ckpt.strategy_state:
            atomic_save_tensors(
                stem.with_name(stem.name + "_strategy.safetensors"), ckpt.strategy_state
            )
        atomic_write_text(stem.with_suffix(".json"), json.dumps({"round": ckpt.round, **ckpt.meta}))

    def latest_checkpoint(self, keep_strategy_state: bool = True) -> Checkpoint | None:
        metas = sorted(self.ckpt_dir.glob("round_*.json"))
        for meta_path in reversed(metas):  # the newest complete one
            tensors = meta_path.with_suffix(".safetensors")
            if not tensors.exists():
                continue
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            state_path = meta_path.with_name(meta_path.stem + "_strategy.safetensors")
            state = (
                load_file(str(state_path)) if keep_strategy_state and state_path.exists() else {}
            )
            return Checkpoint(int(meta.pop("round")), load_file(str(tensors)), state, meta)
        return None

    def checkpoint_rounds(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in self.ckpt_dir.glob("round_*.json"))

    def best_round(self) -> int | None:
        """The round with the highest validation AUROC in metrics.jsonl (the first of ties)."""
        scored = [e for e in self.read_rounds() if e["round"] > 0 and "val" in e]
        if not scored:
            return None
        aurocs = [_finite(e["val"].get("auroc")) for e in scored]
        return int(scored[int(np.argmax(aurocs))]["round"])

    def prune_checkpoints(self, keep_last: int) -> list[int]:
        """Delete every checkpoint but the newest ``keep_last`` and the best round's (0 = none).

        The newest stays (resume needs it) and so does the best (export loads it). A round's
        ``.json`` goes first: a crash mid-delete leaves stray tensors, never a half checkpoint.
        """
        rounds = self.checkpoint_rounds()
        if keep_last <= 0 or len(rounds) <= keep_last:
            return []
        keep = set(rounds[-keep_last:]) | {self.best_round()}
        dropped = [r for r in rounds if r not in keep]
        for r in dropped:
            stem = self.ckpt_dir / f"round_{r:04d}"
            for path in (stem.with_suffix(".json"), stem.with_suffix(".safetensors"),
                         stem.with_name(stem.name + "_strategy.safetensors")):  # fmt: skip
                path.unlink(missing_ok=True)
        return dropped

    def append_round(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.tracking.log_round(record)

    def truncate_after(self, last_round: int) -> None:
        """Drop metric lines of rounds after ``last_round`` (a killed run may have written some)."""
        if not self.metrics_path.exists():
            return
        kept = [
            line
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["round"] <= last_round
        ]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def read_rounds(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [
            json.loads(line)
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]

    # ---- end of run ----------------------------------------------------------------------
    def write_predictions(self, split: str, tag: str, rows: list[dict[str, Any]]) -> Path:
        return predictions.write(self.dir / f"predictions_{split}_{tag}.csv", rows)

    def write_model(self, arrays: dict[str, np.ndarray]) -> None:
        atomic_save_tensors(self.dir / "model.safetensors", arrays)

    def write_summary(self, summary: dict[str, Any]) -> None:
        check_summary(summary)
        atomic_write_text(
            self.dir / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n"
        )
        self.tracking.log_summary(json.loads(json.dumps(summary, default=_json_default)))
        self.tracking.close(summary["status"])


def _finite(value: Any) -> float:
    return float(value) if value is not None and np.isfinite(value) else -1.0


def _json_default(value: Any) -> Any:
    if isinstance(value, np.floating | np.integer):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
