"""``federate``, ``centralize`` and ``local``: the three kinds of training run, same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedprostate.cli_app import app, fail
from fedprostate.config import RunConfig

console = Console()

CONFIG_OPT = typer.Option(None, "--config", "-c", help="Run configuration TOML (configs/*.toml).")
SET_OPT = typer.Option(None, "--set", "-s", help="Override a key: --set fl.rounds=5 (repeatable).")
OUT_OPT = typer.Option(..., "--out", "-o", help="Run folder to write.")


def _load(config: Path | None, overrides: list[str] | None, saved: bool = False) -> RunConfig:
    try:
        return RunConfig.load(config, overrides or [], saved=saved)
    except (ValueError, OSError) as exc:
        fail(f"configuration: {exc}")


def _show(summary: dict, out: Path) -> None:
    table = Table(title=f"run {out}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "kind",
        "strategy",
        "method",
        "arch",
        "best_round",
        "val_auroc",
        "test_auroc",
        "test_ap",
        "trainable_params",
        "uplink_mb_per_client_round",
        "downlink_mb_per_client_round",
        "wall_s",
    ):
        if key in summary:
            value = summary[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command()
def federate(
    config: Path = CONFIG_OPT,
    overrides: list[str] = SET_OPT,
    out: Path = typer.Option(None, "--out", "-o", help="Run folder to write."),
    resume: Path = typer.Option(None, "--resume", help="Continue this killed run folder."),
    force: bool = typer.Option(
        False, "--force", help="With --resume: accept a configuration that differs from the run's."
    ),
    verbose: bool = typer.Option(False, help="Show Flower's debug log."),
) -> None:
    """Federated fine-tuning in a Flower simulation (one SuperNode per client)."""
    from fedprostate.runs.federated import ResumeRefusedError, RunFailedError
    from fedprostate.runs.federated import federate as run_federated

    if resume is not None:
        saved = resume / "config.toml"
        if not saved.exists():
            fail(f"{saved} not found: not a run folder")
        cfg, out = _load(saved, overrides, saved=True), resume
    elif out is None:
        fail("--out RUN is required (or --resume RUN)")
    else:
        cfg = _load(config, overrides)
    try:
        summary = run_federated(cfg, out, resume=resume is not None, verbose=verbose, force=force)
    except ResumeRefusedError as exc:
        fail(exc)
    except RunFailedError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if summary.get("resume") == "noop":
        console.print(
            f"run {out} already finished {summary['rounds']} rounds: nothing to do", soft_wrap=True
        )
    _show(summary, out)


@app.command()
def centralize(
    config: Path = CONFIG_OPT, overrides: list[str] = SET_OPT, out: Path = OUT_OPT
) -> None:
    """Pooled training on every site's data with the same loop (the upper bound)."""
    from fedprostate.runs.pooled import centralize as run_centralized

    _show(run_centralized(_load(config, overrides), out), out)


@app.command("local")
def local_only(
    config: Path = CONFIG_OPT, overrides: list[str] = SET_OPT, out: Path = OUT_OPT
) -> None:
    """Each site trains alone on its own data (the lower bound federation must beat)."""
    from fedprostate.runs.pooled import local_only as run_local

    summary = run_local(_load(config, overrides), out)
    _show(summary, out)
    console.print(json.dumps(summary["per_site"], indent=1))
