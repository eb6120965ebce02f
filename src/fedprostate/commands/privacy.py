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
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and the shadows' halves."),
    shadows: int | None = typer.Option(
        None,
        "--shadows",
        help="Also run LiRA with K >= 2 shadow models trained on halves of the audit pool "
        "(4 is a CPU-sized choice; cost: K x the shipped rounds x steps).",
    ),
    shadow_steps: int | None = typer.Option(
        None,
        "--shadow-steps",
        min=1,
        help="Training steps per shadow round (default: train.steps x sites, a federated "
        "round's compute).",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Membership inference (loss, confidence; LiRA with --shadows), per patient, vs the DP
    bound."""
    from fedprostate.runs.audit import AUDIT_OUT, audit_run

    report = audit_run(run, n_boot=n_boot, seed=seed, shadows=shadows, shadow_steps=shadow_steps)
    if as_json:
        print_json(report)
        return
    dp = report["privacy"]
    table = Table(title=f"membership audit of {run} (members = training patients)")
    for col in ("attack", "AUC", "95% CI", "TPR@1% FPR", "TPR@10% FPR", "members", "non-members"):
        table.add_column(col, justify="left" if col == "attack" else "right")
    for name, r in report["attacks"].items():
        ci = f"{r['ci_low']:.3f}–{r['ci_high']:.3f}"
        low = [r[f"tpr_at_fpr_{x}"] for x in ("0.01", "0.1")]
        low_text = ["–" if v is None else f"{v:.3f}" for v in low]
        table.add_row(
            name, f"{r['auc']:.3f}", ci, *low_text, str(r["members"]), str(r["non_members"])
        )
    console().print(table)
    if "lira" in report:
        lira = report["lira"]
        console().print(
            f"LiRA: {lira['shadows']} shadows x {lira['rounds']} rounds x "
            f"{lira['steps_per_round']} steps, {lira['patients_per_shadow']:.0f} patients each, "
            f"{lira['wall_s']:.0f} s",
            soft_wrap=True,
        )
    console().print(
        f"epsilon {dp['epsilon']:.3g} (delta {dp['delta']}): no attack's AUC can exceed "
        f"{dp['auc_bound']:.3f}; written to {run / AUDIT_OUT}",
        soft_wrap=True,
    )
