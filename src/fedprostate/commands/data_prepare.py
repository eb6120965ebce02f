"""``fedprostate data prepare``: raw studies (PI-CAI, ProstateX, Prostate158, generic) -> cache."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from fedprostate.cli_app import JSON_OPT, console, data_app, fail, print_json


class Format(StrEnum):
    picai = "picai"
    nnunet = "nnunet"
    prostatex = "prostatex"
    prostate158 = "prostate158"
    generic = "generic"
    auto = "auto"


class Mode(StrEnum):
    lesion = "lesion"
    organ = "organ"


@data_app.command("prepare")
def data_prepare(
    src: Path = typer.Option(
        ..., "--data", "--src", help="Raw data folder (or the generic findings CSV)."
    ),
    out: Path = typer.Option(..., "--out", help="Crop cache folder to write."),
    fmt: Format = typer.Option(Format.auto, "--format", help="Input layout; auto detects it."),
    mode: Mode = typer.Option(
        Mode.lesion,
        "--mode",
        help="lesion: a crop per finding; organ: gland box on every gland slice.",
    ),
    crop: int = typer.Option(64, "--crop", help="Crop size in pixels (H = W)."),
    spacing: float = typer.Option(
        0.5, "--spacing", help="In-plane pixel spacing of lesion crops, mm."
    ),
    slices: int = typer.Option(1, "--slices", help="Slices per crop (odd): C = 3 x slices."),
    seed: int = typer.Option(0, "--seed", help="Seed of splits and sampled negatives."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad study."),
    labels: str = typer.Option(
        "human_expert/resampled",
        "--labels",
        help="PI-CAI lesion label folder: human_expert/resampled, "
        "human_expert/original or AI/Bosma22a.",
    ),
    negatives: int = typer.Option(
        2,
        "--negatives",
        help="Sampled normal-tissue locations per study (extra training negatives, flagged "
        "'sampled', never in a headline metric; PI-CAI, Prostate158, nnU-Net).",
    ),
    findings: str = typer.Option(
        "auto",
        "--findings",
        help="Lesion-mode findings of layouts without their own table: a radiology findings "
        "CSV (patient_id, study_id, x, y, z [, pirads, isup|label]), 'proposals' (label-free "
        "candidates) or 'auto' (radiology/findings.csv if present, else proposals).",
    ),
    resample_masks: bool = typer.Option(
        False,
        "--resample-masks",
        help="Resample masks whose grid matches neither the T2 nor the ADC grid (default: "
        "reject the study).",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Read raw studies, crop them and write the per-site crop cache."""
    from fedprostate.data.formats.base import DataFormatError
    from fedprostate.data.prepare import prepare
    from fedprostate.data.study import StudyError

    err = console(stderr=True)
    try:
        report = prepare(
            src,
            out,
            fmt=fmt.value,
            mode=mode.value,
            crop=crop,
            spacing=spacing,
            n_slices=slices,
            seed=seed,
            strict=strict,
            labels=labels,
            negatives=negatives,
            resample_masks=resample_masks,
            console=err,
            findings=findings,
        )
    except StudyError as exc:
        fail(f"{exc} (--strict: stopped; see {out / 'rejected.csv'})", code=1)
    except (DataFormatError, ValueError) as exc:
        fail(exc)
    if as_json:
        print_json({"out": str(out), **report.__dict__, "studies_per_s": report.studies_per_s})
        return
    sites = ", ".join(f"{s}: {n}" for s, n in report.per_site.items())
    err.print(
        f"{report.format}: {report.listed} studies listed, {report.kept} kept, "
        f"{report.rejected} rejected (rejected.csv); {report.crops} crops "
        f"({report.positives} positive, {report.dropped_crops} dropped) in {report.seconds:.1f} s "
        f"({report.studies_per_s:.1f} studies/s) -> {out}",
        highlight=False,
    )
    err.print(f"crops per site: {sites}", highlight=False)
    sources = ", ".join(f"{k}: {n}" for k, n in sorted(report.by_source.items()))
    err.print(
        f"findings by source: {sources}; {report.findings_rejected} findings rejected",
        highlight=False,
    )


@data_app.command("dcm2mha-settings")
def dcm2mha_settings_command(
    data: Path = typer.Option(..., "--data", help="DICOM folder (series anywhere below it)."),
    out: Path = typer.Option(..., "--out", help="picai_prep dcm2mha settings JSON to write."),
    marksheet: Path = typer.Option(
        None, "--marksheet", help="Also write a marksheet template (case_csPCa to fill in)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Write picai_prep's dcm2mha settings for a DICOM tree (then run `python -m picai_prep
    dcm2mha`, which needs the [dicom] extra, and prepare the result as PI-CAI)."""
    from fedprostate.data.dcm2mha import (
        dcm2mha_settings,
        marksheet_template,
        write_marksheet,
        write_settings,
    )

    settings = dcm2mha_settings(data)
    write_settings(settings, out)
    rows = marksheet_template(settings, data)
    if marksheet is not None:
        write_marksheet(rows, marksheet)
    if as_json:
        print_json(settings)
        return
    mapped = ", ".join(f"{k}: {v['SeriesDescription']}" for k, v in settings["mappings"].items())
    console().print(f"{len(settings['archive'])} series of {len(rows)} studies -> {out}")
    console().print(f"series descriptions: {mapped}")
