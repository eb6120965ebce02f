"""A federated run: the run folder, the Flower simulation, and its outcome.

A run whose every reply of every round was rejected trained nothing: its ``summary.json`` says
``status = "failed"`` with the reason, and :func:`federate` raises :class:`RunFailedError` so the
command ends non-zero instead of reporting the untrained model's test AUROC.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedprostate.config import ConfigError, RunConfig
from fedprostate.engine import privacy, setup
from fedprostate.fl.simulation import simulate
from fedprostate.runs.resume import ResumeRefusedError, check_resume

__all__ = ["ResumeRefusedError", "RunFailedError", "federate", "finished_summary", "preflight"]


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
    cfg = setup.resolve_privacy(cfg)
    preflight(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    simulate(cfg, len(setup.client_names(cfg)), verbose=verbose)
    return finished_summary(Path(cfg.out))


def preflight(cfg: RunConfig) -> dict:
    """Refuse before any process starts (ConfigError / PrivacyBudgetError, exit 2 at the
    command): a federation smaller than ``fl.min_sites``, a privacy plan over budget. Returns
    the privacy plan (empty without DP)."""
    names = setup.client_names(cfg)
    if cfg.fl.min_sites > len(names):
        raise ConfigError(
            f"fl.min_sites = {cfg.fl.min_sites} is larger than the federation "
            f"({len(names)} site{'s' if len(names) != 1 else ''}: {', '.join(names)}): no round "
            f"could aggregate; lower fl.min_sites (with fewer than 3 sites the server can "
            "tell a site's update from the aggregate)"
        )
    if cfg.fl.secure_aggregation and len(names) < 3:
        raise ConfigError(
            f"fl.secure_aggregation = true needs at least 3 sites (this federation has "
            f"{len(names)}): with two, the sum and one's own update reveal the other's"
        )
    p = cfg.privacy
    count_std = p.clipped_count_stddev or len(names) / 20  # Flower's default: sites / 20
    if p.client.endswith("-adaptive") and p.noise_multiplier >= 2 * count_std:
        raise ConfigError(
            f"privacy.clipped_count_stddev = {count_std:g} (0 = sites / 20) must exceed "
            f"privacy.noise_multiplier / 2 = {p.noise_multiplier / 2:g}: adaptive clipping "
            "spends part of the noise on the count of clipped updates (Andrew et al. 2021)"
        )
    if not p.enabled:
        return {}
    sizes = {n: len(setup.client_dataset(cfg, n, "train")) for n in names}
    return privacy.check_plan(cfg, sizes)


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
