"""Resuming a run folder: refuse a changed configuration, say so when there is nothing to do.

A resume continues *the same* run: ``config.toml`` in the run folder is what the run was started
with. A resume whose configuration differs (any key but the run plumbing ``out`` / ``resume``) is
refused with the differences unless forced; a forced resume is recorded in the run's audit log.
Resuming a run that already completed its rounds does nothing and says so (it never retrains nor
rewrites ``summary.json``).
"""

from __future__ import annotations

from pathlib import Path

from fedprostate.config import ConfigError, RunConfig
from fedprostate.fl.server import finished_already
from fedprostate.records.audit import AUDIT_FILE, AuditLog
from fedprostate.records.run_folder import RunRecorder

PLUMBING = frozenset({"out", "resume"})


class ResumeRefusedError(ValueError):
    """A resume that would silently change the run (the message lists the differences)."""


def config_diff(saved: RunConfig, new: RunConfig) -> list[str]:
    """``key: saved -> new`` for every key that differs (the run plumbing excluded)."""
    old, cur = saved.to_flat(), new.to_flat()
    return [
        f"{key}: {old.get(key)!r} -> {cur.get(key)!r}"
        for key in sorted(set(old) | set(cur))
        if key not in PLUMBING and old.get(key) != cur.get(key)
    ]


def check_resume(run_dir: str | Path, cfg: RunConfig, force: bool = False) -> dict | None:
    """Before a resume of ``run_dir`` with ``cfg`` (as the server will receive it).

    Returns the run's summary when it already finished (nothing to do); raises
    :class:`ResumeRefusedError` when the configuration changed and ``force`` is not set.
    """
    run = Path(run_dir)
    saved_path = run / "config.toml"
    if not saved_path.is_file():
        raise ResumeRefusedError(f"{saved_path} not found: not a run folder to resume")
    try:
        saved = RunConfig.load(saved_path, saved=True)
    except ConfigError as exc:
        raise ResumeRefusedError(f"{saved_path}: {exc}") from None
    diff = config_diff(saved, cfg)
    if diff and not force:
        raise ResumeRefusedError(
            f"resuming {run} with a different configuration ({'; '.join(diff)}); "
            "resume with the run's own configuration, or pass --force to change it"
        )
    if diff:
        AuditLog(run / AUDIT_FILE).append("resume_forced", changes=diff)
    return finished_already(cfg, RunRecorder(run))
