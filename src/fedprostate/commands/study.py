"""``fedprostate study``, ``fedprostate report`` and ``fedprostate demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from fedprostate.cli_app import app, console


@app.command("study")
def study_command(
    config: Path = typer.Option(
        ..., "--config", "-c", help="Study configuration (configs/study-*.toml)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Study folder (resumable)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Only list the cells and a time estimate."
    ),
) -> None:
    """Run the study that tests the published claims; finished cells are not rerun."""
    from fedprostate.study.runner import run_study

    try:
        run_study(config, out, dry_run=dry_run, console=console())
    except (ValueError, FileNotFoundError) as exc:
        console(stderr=True).print(f"[red]study error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command("report")
def report_command(
    run: Path = typer.Argument(
        ..., help="A run folder (federate/centralize/local), a --seeds folder or a study folder."
    ),
    cache: Path = typer.Option(
        None, "--data", "--cache", help="Crop cache, when the one in config.toml moved."
    ),
    n_boot: int = typer.Option(None, help="Bootstrap resamples (default: the run's eval.n_boot)."),
) -> None:
    """Write RUN/report.html (self-contained) and RUN/report.md."""
    from fedprostate.records.tracking import log_artifacts
    from fedprostate.report.run_report import write_run_report
    from fedprostate.report.seeds import write_seeds_report
    from fedprostate.study.report import write_study_report

    try:
        if (run / "study.json").exists() and (run / "arms.json").exists():
            page = write_study_report(run)
        elif (run / "seeds.json").exists():
            page = write_seeds_report(run)
        else:
            page = write_run_report(run, n_boot=n_boot, cache=cache)
    except FileNotFoundError as exc:
        console(stderr=True).print(f"[red]report error:[/red] {exc}")
        raise typer.Exit(2) from None
    log_artifacts(run, [page, page.with_suffix(".md")], "report")  # a run tracked with MLflow
    console().print(f"[green]report:[/green] {page.resolve()}")


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Demo folder."),
    config: Path = typer.Option(
        None, "--config", "-c", help="Demo configuration (default configs/demo.toml)."
    ),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="Override: demo.patients=60, fl.rounds=3."
    ),
    quick: bool = typer.Option(False, "--quick", help="A tiny version for tests (~2 minutes)."),
) -> None:
    """Synthesize, prepare, pre-train, federate (LoRA + FedAdam + int8) and report, in minutes."""
    from fedprostate.demo import run_demo

    try:
        run_demo(out, config=config, overrides=overrides or [], quick=quick, console=console())
    except (ValueError, FileNotFoundError) as exc:
        console(stderr=True).print(f"[red]demo error:[/red] {exc}")
        raise typer.Exit(2) from None
