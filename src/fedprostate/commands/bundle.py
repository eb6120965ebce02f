"""``export``, ``predict`` and ``distill``: from a finished run to a model a hospital can run."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedprostate.cli_app import app, fail

console = Console()
err = Console(stderr=True)


def _fail(exc: Exception) -> None:
    fail(exc)


@app.command()
def export(
    run: Path = typer.Argument(..., help="Finished run folder (federate / centralize)."),
    out: Path = typer.Option(None, "--out", "-o", help="Bundle folder (default RUN/bundle)."),
    formats: list[str] = typer.Option(
        ["bundle", "onnx"], "--format", "-f", help="bundle (always written) and/or onnx."
    ),
) -> None:
    """Export a run as a model bundle: merged weights, ONNX, preprocessing, threshold, model card."""
    from fedprostate.runs.export import ExportError, export_run

    out = out or run / "bundle"
    try:
        meta = export_run(run, out, formats=tuple(formats))
    except (ExportError, ValueError, OSError) as exc:
        _fail(exc)
    console.print(f"bundle written to {out}: {meta['arch']}, threshold {meta['threshold']:.4f}")
    console.print(
        f"bundle sha256 (publish it; check with predict --expected-sha256): {meta['bundle_sha256']}"
    )
    if "onnx" in meta:
        diff = meta["onnx"]["parity_max_abs_logit_diff_vs_unmerged"]
        console.print(f"ONNX parity vs unmerged model: max |Δlogit| = {diff:.2e}")


@app.command()
def predict(
    model: Path = typer.Option(..., "--model", "-m", help="Model bundle folder (export)."),
    study: Path = typer.Option(None, "--study", help="Study folder or dataset root (any layout)."),
    findings: Path = typer.Option(
        None, "--findings", help="CSV of x,y,z (LPS mm) [finding_id, zone] or t2w,adc,hbv paths."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Write predictions.json/.csv here."),
    patient: str = typer.Option(None, "--patient", help="Only this patient of a dataset root."),
    expected_sha256: str = typer.Option(
        "", "--expected-sha256", help="The bundle hash the consortium published (bundle_sha256)."
    ),
) -> None:
    """Per-finding csPCa probabilities for a new study (research only, not for clinical use)."""
    from fedprostate.data.formats.base import DataFormatError
    from fedprostate.data.study import StudyError
    from fedprostate.models.bundle import BundleError
    from fedprostate.runs.predict import predict as run_predict

    try:
        result = run_predict(model, study, findings, out, patient, expected_sha256)
    except (StudyError, DataFormatError, BundleError, OSError) as exc:
        _fail(exc)
    if out is None:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"csPCa probability ({result['model']['arch']})")
    for col in ("patient", "study", "finding", "score", "positive"):
        table.add_column(col)
    for r in result["findings"]:
        table.add_row(
            r["patient_id"], r["study_id"], r["finding_id"], f"{r['score']:.3f}", str(r["positive"])
        )
    console.print(table)
    for p in result["patients"]:
        console.print(
            f"patient {p['patient_id']} ({p['study_id']}): score {p['patient_score']:.3f}"
        )
    console.print(f"written to {out}")


@app.command()
def distill(
    teacher: Path = typer.Option(..., "--teacher", help="Teacher bundle folder (export)."),
    config: Path = typer.Option(None, "--config", "-c", help="Run configuration TOML."),
    overrides: list[str] = typer.Option(None, "--set", "-s", help="Override a key (repeatable)."),
    student: str = typer.Option("resnet18", "--student", help="Student backbone name."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    centralized: bool = typer.Option(False, help="Also run centralized distillation."),
) -> None:
    """Federated distillation of a teacher into a compact student, with the comparison report."""
    from fedprostate.config import RunConfig
    from fedprostate.models.bundle import BundleError
    from fedprostate.runs.distill import report_markdown, run_distillation

    try:
        cfg = RunConfig.load(config, overrides or [])
        report = run_distillation(teacher, cfg, student, out, centralized=centralized)
    except (BundleError, ValueError, OSError) as exc:
        _fail(exc)
    console.print(report_markdown(report))
