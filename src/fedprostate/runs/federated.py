"""A federated run: the run folder, the Flower simulation, and its outcome.

A run whose every reply of every round was rejected trained nothing: its ``summary.json`` says
``status = "failed"`` with the reason, and :func:`federate` raises :class:`RunFailedError` so the
command ends non-zero instead of reporting the untrained model's test AUROC.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedprostate.config import RunConfig
from fedprostate.engine import setup
from fedprostate.fl.simulation import simulate
from fedprostate.runs.resume import ResumeRefusedError, check_resume

__all__ = ["ResumeRefusedError", "RunFailedError", "federate", "finished_summary"]


class RunFailedError(RuntimeError):
    """A run that ended without a usable model (the message says why)."""


def federate(
    cfg: RunConfig,
    out: str | Path,
    resume: bool = False,
    verbose: bool = False,
    force: bool = False,
) -> dict:
    """Run a federated fine-tuning simulation; returns the run's summary.json content.

    A resume with a configuration other than the run's raises :class:`ResumeRefusedError` unless
    ``force``; a resume of a finished run returns its summary (with ``"resume": "noop"``) at once.
    """
    cfg = setup.prepare_run_config(cfg, out, resume)
    if resume and (done := check_resume(cfg.out, cfg, force)) is not None:
        return {**done, "resume": "noop"}
    setup.check_run_data(cfg)
    setup.check_tracking(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    simulate(cfg, len(setup.client_names(cfg)), verbose=verbose)
    return finished_summary(Path(cfg.out))


def finished_summary(run_dir: Path) -> dict:
    """The run's summary; :class:`RunFailedError` when it is missing or says the run failed."""
    path = run_dir / "summary.json"
    if not path.exists():
        raise RunFailedError(f"the federated run ended without writing {path}; see the log above")
    summary = json.loads(path.read_text(encoding="utf-8"))
    if summary.get("status") == "failed":
        raise RunFailedError(
            f"run failed: {summary.get('reason', 'no reason recorded')} ({run_dir})"
        )
    return summary
