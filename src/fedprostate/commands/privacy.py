"""``fedprostate audit RUN``: membership-inference audit of a run's shipped model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fedprostate.cli_app import JSON_OPT, app, console, print_json


@app.command()
def audit(
    run: Path = typer.Argument(..., help="Run folder (federate / centralize) to attack."),
    n_boot: int = typer.Option(1000, "--n-boot", min=10, help="Bootstrap resamples of patients."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    as_json: bool = JSON_OPT,
) -> None:
    """Membership inference (loss and confidence attacks, per patient) vs the DP bound."""
    from fedprostate.runs.audit import AUDIT_OUT, audit_run

    report = audit_run(run, n_boot=n_boot, seed=seed)
    if as_json:
        print_json(report)
        return
    dp = report["privacy"]
    table = Table(title=f"membership audit of {run} (members = training patients)")
    for col in ("attack", "AUC", "95% CI", "members", "non-members"):
        table.add_column(col, justify="left" if col == "attack" else "right")
    for name, r in report["attacks"].items():
        ci = f"{r['ci_low']:.3f}–{r['ci_high']:.3f}"
        table.add_row(name, f"{r['auc']:.3f}", ci, str(r["members"]), str(r["non_members"]))
    console().print(table)
    console().print(
        f"epsilon {dp['epsilon']:.3g} (delta {dp['delta']}): no attack's AUC can exceed "
        f"{dp['auc_bound']:.3f}; written to {run / AUDIT_OUT}",
        soft_wrap=True,
    )
