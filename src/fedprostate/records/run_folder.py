"""One folder per run: config.toml, metrics.jsonl, checkpoints/, predictions_*.csv, summary.json.

With a :class:`~fedprostate.records.tracking.Tracking`, every round line, the configuration and
the summary also go to TensorBoard / MLflow. ``prune_checkpoints`` keeps the newest rounds and
the best one on validation (``keep_last``).

Every file that a resume depends on is written atomically and durably: temp file, ``fsync`` of
the file, rename, ``fsync`` of the folder (a rename is only durable once its directory entry is).
A round's metrics line is appended (and fsynced) before its checkpoint, and each checkpoint's
JSON records the SHA-256 of its tensor files. Reading is forgiving, so a crash or a damaged disk
never stops a resume: a torn or unparseable ``metrics.jsonl`` line ends the readable part of the
file (it and later lines are dropped, with a warning), and a checkpoint that does not load or
whose hash differs is skipped for the one before it (the last good round).
"""

from __future__ import annotations

import hashlib
import json
import logging
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


log = logging.getLogger("fedprostate.records")


def fsync_dir(folder: Path) -> None:
    """Make a rename or creation inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_durably(tmp: Path, path: Path) -> None:
    _fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    _replace_durably(tmp, path)


def atomic_save_tensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
    _replace_durably(tmp, path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        tensors = stem.with_suffix(".safetensors")
        atomic_save_tensors(tensors, ckpt.arrays)
        hashes = {"sha256": file_sha256(tensors)}
        if ckpt.strategy_state:
            state = stem.with_name(stem.name + "_strategy.safetensors")
            atomic_save_tensors(state, ckpt.strategy_state)
            hashes["strategy_sha256"] = file_sha256(state)
        meta = {"round": ckpt.round, **ckpt.meta, **hashes}
        atomic_write_text(stem.with_suffix(".json"), json.dumps(meta))

    def checkpoint_rounds(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in self.ckpt_dir.glob("round_[0-9]*.json"))

    def load_checkpoint(self, server_round: int, keep_strategy_state: bool = True) -> Checkpoint:
        """One round's checkpoint, verified against its recorded hashes (ValueError if not)."""
        meta_path = self.ckpt_dir / f"round_{server_round:04d}.json"
        tensors = meta_path.with_suffix(".safetensors")
        state_path = meta_path.with_name(meta_path.stem + "_strategy.safetensors")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("sha256") and file_sha256(tensors) != meta["sha256"]:
                raise ValueError(f"{tensors.name}: sha256 differs from {meta_path.name}")
            arrays = load_file(str(tensors))
            state = {}
            if keep_strategy_state and meta.get("strategy_sha256"):
                if file_sha256(state_path) != meta["strategy_sha256"]:
                    raise ValueError(f"{state_path.name}: sha256 differs from {meta_path.name}")
                state = load_file(str(state_path))
        except ValueError:
            raise
        except Exception as exc:  # safetensors, JSON, OS errors: one clear reason
            raise ValueError(
                f"{meta_path.stem}: unreadable ({type(exc).__name__}: {exc})"
            ) from None
        for key in ("sha256", "strategy_sha256"):
            meta.pop(key, None)
        return Checkpoint(int(meta.pop("round")), arrays, state, meta)

    def latest_checkpoint(
        self, keep_strategy_state: bool = True, max_round: int | None = None
    ) -> Checkpoint | None:
        """The newest checkpoint that loads and matches its hashes (at most ``max_round``)."""
        for server_round in reversed(self.checkpoint_rounds()):
            if max_round is not None and server_round > max_round:
                continue
            try:
                return self.load_checkpoint(server_round, keep_strategy_state)
            except ValueError as exc:
                log.warning(
                    "%s: checkpoint skipped, falling back to an older one: %s", self.dir, exc
                )
        return None

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
        new = not self.metrics_path.exists()
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fsync_dir(self.dir)
        self.tracking.log_round(record)

    def _good_lines(self) -> list[tuple[str, dict[str, Any]]]:
        """(line, record) up to the first torn or unparseable line (which ends the file)."""
        if not self.metrics_path.exists():
            return []
        out = []
        lines = self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                int(record["round"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning(
                    "%s: line %d is torn or corrupt; it and %d later line(s) are ignored",
                    self.metrics_path,
                    number,
                    len(lines) - number,
                )
                break
            out.append((line, record))
        return out

    def truncate_after(self, last_round: int) -> None:
        """Keep the readable lines of rounds <= ``last_round`` (a killed run may have written
        later or torn ones)."""
        if not self.metrics_path.exists():
            return
        kept = [line for line, rec in self._good_lines() if int(rec["round"]) <= last_round]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def read_rounds(self) -> list[dict[str, Any]]:
        return [record for _, record in self._good_lines()]

    def last_good_round(self) -> Checkpoint | None:
        """The checkpoint a resume continues from: the newest intact one whose round also has
        a readable metrics line."""
        rounds = [int(r["round"]) for r in self.read_rounds()]
        if not rounds:
            return None
        return self.latest_checkpoint(max_round=max(rounds))

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
