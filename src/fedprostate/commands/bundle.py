"""``export``, ``predict`` and ``distill``: from a finished run to a model a hospital can run."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from fedprostate.cli_app import JSON_OPT, app, console, fail, print_json


def _fail(exc: Exception) -> None:
    fail(exc)


@app.command()
def export(
    run: Path = typer.Argument(..., help="Finished run folder (federate / centralize)."),
    out: Path = typer.Option(None, "--out", "-o", help="Bundle folder (default RUN/bundle)."),
    formats: list[str] = typer.Option(
        ["bundle", "onnx"], "--format", "-f", help="bundle (always written) and/or onnx."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Export a run as a model bundle: merged weights, ONNX, preprocessing, threshold, model card."""
    from fedprostate.runs.export import ExportError, export_run

    out = out or run / "bundle"
    try:
        meta = export_run(run, out, formats=tuple(formats))
    except (ExportError, ValueError, OSError) as exc:
        _fail(exc)
    if as_json:
        print_json({"out": str(out), **meta})
        return
    con = console()
    con.print(f"bundle written to {out}: {meta['arch']}, threshold {meta['threshold']:.4f}")
    con.print(
        f"bundle sha256 (publish it; check with predict --expected-sha256): {meta['bundle_sha256']}"
    )
    if "onnx" in meta:
        diff = meta["onnx"]["parity_max_abs_logit_diff_vs_unmerged"]
        con.print(f"ONNX parity vs unmerged model: max |Δlogit| = {diff:.2e}")


@app.command()
def predict(
    model: Path = typer.Option(..., "--model", "-m", help="Model bundle folder (export)."),
    study: Path = typer.Option(
        None, "--data", "--study", help="Study folder or dataset root (any layout)."
    ),
    findings: Path = typer.Option(
        None, "--findings", help="CSV of x,y,z (LPS mm) [finding_id, zone] or t2w,adc,hbv paths."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Write predictions.json/.csv here."),
    patient: str = typer.Option(None, "--patient", help="Only this patient of a dataset root."),
    detection_maps: bool = typer.Option(
        False,
        "--detection-maps",
        help="Also write OUT/detection_maps/ + OUT/labels/ (.nii.gz) for picai_eval.",
    ),
    as_json: bool = JSON_OPT,
    expected_sha256: str = typer.Option(
        "", "--expected-sha256", help="The bundle hash the consortium published (bundle_sha256)."
    ),
) -> None:
    """Per-finding csPCa probabilities for a new study (research only, not for clinical use).

    Over a dataset root, studies that cannot be scored (no finding, unreadable, failing a check)
    are listed as skipped and the others scored; exit 2 only when nothing could be scored."""
    from fedprostate.data.formats.base import DataFormatError
    from fedprostate.data.study import StudyError
    from fedprostate.models.bundle import BundleError
    from fedprostate.runs.predict import predict as run_predict

    if detection_maps and out is None:
        fail("--detection-maps needs --out FOLDER")
    try:
        result = run_predict(
            model, study, findings, out, patient,
            detection_maps=detection_maps, expected_sha256=expected_sha256,
        )  # fmt: skip
    except (StudyError, DataFormatError, BundleError, OSError) as exc:
        _fail(exc)
    err = console(stderr=True)
    for skip in result["skipped"]:
        err.print(
            f"skipped patient {skip['patient_id']} ({skip['path']}): {skip['reason']}",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
    for note in result["dropped_crops"]:
        err.print(f"dropped crop of {note}", markup=False, highlight=False, soft_wrap=True)
    if out is None or as_json:
        print_json(result)
        return
    con = console()
    table = Table(title=f"csPCa probability ({result['model']['arch']})")
    for col in ("patient", "study", "finding", "score", "positive"):
        table.add_column(col)
    for r in result["findings"]:
        table.add_row(
            r["patient_id"], r["study_id"], r["finding_id"], f"{r['score']:.3f}", str(r["positive"])
        )
    con.print(table)
    for p in result["patients"]:
        con.print(f"patient {p['patient_id']} ({p['study_id']}): score {p['patient_score']:.3f}")
    con.print(
        f"{len(result['patients'])} studies scored, {len(result['skipped'])} skipped; "
        f"written to {out}"
    )


@app.command()
def distill(
    teacher: Path = typer.Option(..., "--teacher", help="Teacher bundle folder (export)."),
    config: Path = typer.Option(None, "--config", "-c", help="Run configuration TOML."),
    overrides: list[str] = typer.Option(None, "--set", "-s", help="Override a key (repeatable)."),
    student: str = typer.Option("resnet18", "--student", help="Student backbone name."),
    data: Path = typer.Option(
        None, "--data", "--cache", help="Crop cache (= --set data.cache=DIR)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    centralized: bool = typer.Option(False, help="Also run centralized distillation."),
    as_json: bool = JSON_OPT,
) -> None:
    """Federated distillation of a teacher into a compact student, with the comparison report."""
    from fedprostate.config import RunConfig
    from fedprostate.models.bundle import BundleError
    from fedprostate.runs.distill import report_markdown, run_distillation

    try:
        extra = [f"data.cache={json.dumps(str(data))}"] if data is not None else []
        cfg = RunConfig.load(config, [*(overrides or []), *extra])
        report = run_distillation(teacher, cfg, student, out, centralized=centralized)
    except (BundleError, ValueError, OSError) as exc:
        _fail(exc)
    if as_json:
        print_json(report)
        return
    console().print(report_markdown(report))
