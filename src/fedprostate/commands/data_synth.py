"""``fedprostate data synth`` and ``fedprostate data summary``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedprostate.cli_app import console, data_app


@data_app.command("synth")
def synth_command(
    out: Path = typer.Option(..., "--out", help="Output folder."),
    sites: int | None = typer.Option(None, help="Number of collections (default 17; small: 5)."),
    patients: int | None = typer.Option(None, help="Total patients (default 2040; small: 100)."),
    seed: int = typer.Option(0, help="Seed: same seed, same bytes."),
    preset: str = typer.Option("default", help="default | small"),
    layout: str = typer.Option("picai", help="picai (MHA + NIfTI + marksheet) | prostatex (DICOM)"),
    unlabeled: int = typer.Option(
        0, help="Extra unlabeled studies for self-supervised pre-training."
    ),
    workers: int | None = typer.Option(
        None, help="Processes (default: 2 for the default preset or from 200 studies, else 1)."
    ),
) -> None:
    """Write a realistic synthetic multi-site bpMRI federation in a real public layout."""
    from fedprostate.data.synth.federation import synthesize

    con = console()
    with Progress(
        TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=con,
    ) as bar:  # fmt: skip
        task = bar.add_task("studies", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            report = synthesize(
                out, sites, patients, seed, preset, layout, unlabeled, workers, progress
            )
        except ValueError as err:
            raise typer.BadParameter(str(err)) from err
    table = Table(title=f"{out} ({layout} layout)")
    for col in ("site", "patients", "csPCa+", "findings"):
        table.add_column(col, justify="left" if col == "site" else "right")
    for name, row in report.per_site.items():
        table.add_row(name, str(row["patients"]), str(row["positives"]), str(row["findings"]))
    con.print(table)
    con.print(
        f"{report.n_studies} studies + {report.n_unlabeled} unlabeled, {report.n_findings} "
        f"radiologist-marked findings ({report.n_lesions} lesions in the ground truth), "
        f"{report.bytes_written / 1e6:.1f} MB in {report.seconds:.1f} s"
    )


@data_app.command("summary")
def summary_command(
    path: Path = typer.Argument(..., help="A synth output folder or a prepared crop cache."),
    plot: Path | None = typer.Option(None, help="PNG path (default PATH/summary.png)."),
) -> None:
    """Summarize a crop cache (PATH/index.csv) or a raw synthetic dataset (with a histogram plot)."""
    if (path / "index.csv").is_file():
        from fedprostate.data.cache import summarize_cache

        summarize_cache(path, console=console())
        return
    from fedprostate.data.synth.summary import summarize_raw

    con = console()
    try:
        result = summarize_raw(path, plot or path / "summary.png")
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err)) from err
    table = Table(title=f"{path} ({result['layout']} layout)")
    cols = ("site", "vendor", "field_T", "b_value", "patients", "prevalence", "findings", "clinsig",
            "t2_median", "adc_median")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col in ("site", "vendor") else "right")
    for row in result["sites"]:
        table.add_row(
            *[f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        )
    con.print(table)
    rule, reader = result["adc_rule"], result["reader"]
    con.print(
        f"ADC rule (mean ADC in a 3 mm ROI, lower = suspicious): AUROC {rule['auroc']:.3f} on "
        f"the {rule['n']} radiologist-marked findings; shuffled labels {rule['shuffled']:.3f}."
    )
    share = ", ".join(
        f"PI-RADS {k}: {v['cspca']}/{v['n']}" for k, v in reader["csPCa_share"].items()
    )
    con.print(
        f"Radiologist: PI-RADS >= 3 marks {reader['sensitivity']:.1%} of {reader['n_cancers']} "
        f"csPCa lesions; csPCa among marks {share}; PI-RADS AUROC {reader['pirads_auroc']:.3f}. "
        f"Plot: {result['plot']}"
    )
