"""``data prepare``: raw studies -> crop cache.

List the studies, then for each: load (reader) → validate → duplicate check → fit normalization
→ crops. Any problem with one study becomes a :class:`StudyError`: one line naming the file and
patient is printed, the study is appended to ``CACHE/rejected.csv`` at once, and the run goes on
(``strict=True`` raises at the first instead). Splits are assigned by patient at the end and the
site tensors, index and meta are written atomically.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedprostate.config import HEADLINE_SOURCES
from fedprostate.data.cache import RejectedLog, write_cache
from fedprostate.data.crops import CropSpec, channel_names, study_crops
from fedprostate.data.dedup import DuplicateFinder
from fedprostate.data.formats.base import DataFormatError, StudyRef
from fedprostate.data.formats.findings_table import FindingError
from fedprostate.data.formats.registry import list_studies, load_study
from fedprostate.data.preprocess import describe, fit_normalization
from fedprostate.data.splits import assign_splits
from fedprostate.data.study import SEQUENCES, Study, StudyError

# What `fedprostate data synth` writes beside every synthetic dataset (its invented site profiles).
SYNTH_MARKER = Path("truth") / "sites.csv"


def provenance_of(src: str | Path | None) -> str:
    """``synthetic`` for a tree written by ``data synth``, ``real`` for any other existing source,
    ``unknown`` when the source is not at hand."""
    if not src or not Path(src).exists():
        return "unknown"
    root = Path(src) if Path(src).is_dir() else Path(src).parent
    return "synthetic" if (root / SYNTH_MARKER).is_file() else "real"


@dataclass
class PrepareReport:
    format: str
    listed: int = 0
    kept: int = 0
    rejected: int = 0
    crops: int = 0
    dropped_crops: int = 0  # optional crops (sampled negatives, organ slices) failing crop checks
    positives: int = 0
    seconds: float = 0.0
    findings_rejected: int = 0
    per_site: dict[str, int] = field(default_factory=dict)  # site -> crops
    by_source: dict[str, int] = field(default_factory=dict)  # finding source -> crops
    reasons: list[str] = field(default_factory=list)

    @property
    def studies_per_s(self) -> float:
        return self.listed / self.seconds if self.seconds > 0 else float("nan")


def _as_study_error(ref: StudyRef, exc: Exception) -> StudyError:
    if isinstance(exc, StudyError):
        return exc
    message = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    return StudyError(
        ref.patient_id, f"unexpected {type(exc).__name__}: {message[:150]}", ref.main_path
    )


def _rows_for(study: Study, crops) -> list[dict]:
    psad = study.clinical.get("psad")
    case = study.case_label
    if case is None:
        case = max((c.label for c in crops), default=0)
    return [
        {
            "site": study.site,
            "patient_id": study.patient_id,
            "study_id": study.study_id,
            "finding_id": c.finding_id,
            "label": c.label,
            "isup": c.isup,
            "zone": c.zone,
            "source": c.source,
            "slice": c.slice,
            "adc_mean": c.adc_mean,
            "psad": psad,
            "case_label": int(case),
            "pirads": c.pirads,
        }
        for c in crops
    ]


def _patient_row(study: Study, crops) -> dict:
    case = (
        study.case_label
        if study.case_label is not None
        else max((c.label for c in crops), default=0)
    )
    return {
        "site": study.site,
        "patient_id": study.patient_id,
        "study_id": study.study_id,
        "case_label": int(case),
        "psad": study.clinical.get("psad"),
        "n_findings": sum(c.source in HEADLINE_SOURCES for c in crops),
    }


def prepare(
    src: str | Path,
    out: str | Path,
    fmt: str = "auto",
    mode: str = "lesion",
    crop: int = 64,
    spacing: float = 0.5,
    n_slices: int = 1,
    seed: int = 0,
    strict: bool = False,
    labels: str = "human_expert/resampled",
    negatives: int = 2,
    resample_masks: bool = False,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    progress: bool = True,
    console=None,
    findings: str = "auto",
) -> PrepareReport:
    """Prepare the crop cache in ``out``; returns counts. Raises DataFormatError / StudyError.

    ``findings`` (lesion mode, layouts without their own findings table): ``auto`` (the layout's
    radiology table if present, else proposals), ``proposals``, or a findings-table path."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = console or Console(stderr=True)
    spec = CropSpec(mode=mode, crop=crop, spacing=spacing, n_slices=n_slices)
    start = time.perf_counter()
    wanted = "none" if mode == "organ" else findings
    fmt, refs, listing_errors = list_studies(src, fmt, labels=labels, findings=wanted)
    finding_errors = [e for e in listing_errors if isinstance(e, FindingError)]
    listing_errors = [e for e in listing_errors if not isinstance(e, FindingError)]
    report = PrepareReport(format=fmt, listed=len(refs) + len(listing_errors))
    log = RejectedLog(out)

    def reject(err: StudyError, study_id: str = "") -> None:
        report.rejected += 1
        report.reasons.append(str(err))
        log.add(err.path, err.patient_id, study_id, err.reason)
        if strict:
            raise err
        console.print(f"[yellow]skipped[/yellow] {err}", highlight=False, soft_wrap=True)

    def reject_finding(err: StudyError, study_id: str, finding_id: str) -> None:
        report.findings_rejected += 1
        report.reasons.append(str(err))
        log.add(err.path, err.patient_id, study_id, err.reason, finding_id)
        if strict:
            raise err
        console.print(f"[yellow]finding skipped[/yellow] {err}", highlight=False, soft_wrap=True)

    for err in listing_errors:
        reject(err)
    for err in finding_errors:
        reject_finding(err, "", err.finding_id)

    rows: list[dict] = []
    patients: list[dict] = []
    arrays: dict[str, list[np.ndarray]] = defaultdict(list)
    duplicates = DuplicateFinder()
    columns = [
        *Progress.get_default_columns()[:1],
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task(f"prepare {fmt} ({mode})", total=len(refs))
        for ref in refs:
            try:
                study = load_study(
                    ref,
                    seed=seed,
                    negatives=negatives if mode == "lesion" else 0,
                    resample_masks=resample_masks,
                )
                earlier = duplicates.check(study)
                if earlier:
                    raise StudyError(
                        study.patient_id,
                        f"duplicate of {earlier} (same T2 image fingerprint)",
                        study.source_paths.get("t2w"),
                    )
                dropped: list[str] = []
                crops = study_crops(study, fit_normalization(study), spec, dropped)
            except Exception as exc:  # every per-study failure is recorded, never fatal
                reject(_as_study_error(ref, exc), ref.study_id)
                bar.advance(task)
                continue
            for finding_id, reason in study.rejected_findings:
                path = study.source_paths.get("findings", "")
                reject_finding(
                    StudyError(study.patient_id, reason, path), study.study_id, finding_id
                )
            if dropped:
                report.dropped_crops += len(dropped)
                console.print(
                    f"[yellow]dropped[/yellow] {len(dropped)} crop(s) of patient "
                    f"{study.patient_id}: {dropped[0]}",
                    highlight=False,
                    soft_wrap=True,
                )
            for row, c in zip(_rows_for(study, crops), crops, strict=True):
                row["row"] = len(arrays[study.site])
                arrays[study.site].append(c.array)
                rows.append(row)
                report.by_source[c.source] = report.by_source.get(c.source, 0) + 1
            patients.append(_patient_row(study, crops))
            report.kept += 1
            bar.advance(task)

    if not rows:
        raise DataFormatError(
            f"{src}: no usable study ({report.rejected} rejected, see {log.path})"
        )
    assign_splits(patients + rows, fractions=fractions, seed=seed)
    meta = {
        "mode": mode,
        "crop": crop,
        "spacing": spacing,
        "channels": list(SEQUENCES),
        "channel_names": channel_names(n_slices),
        "normalization": describe(),
        "seed": seed,
        "n_slices": n_slices,
        "sites": sorted(arrays),
        "format": fmt,
        "labels": labels,
        "resample_masks": resample_masks,
        "negatives_per_study": negatives if mode == "lesion" else 0,
        "fractions": list(fractions),
        "src": str(Path(src).resolve()),
        "findings": wanted,
        "provenance": provenance_of(src),
        "counts": {
            "listed": report.listed,
            "kept": report.kept,
            "rejected": report.rejected,
            "findings_rejected": report.findings_rejected,
            "crops": len(rows),
            "by_source": dict(sorted(report.by_source.items())),
            "patients_without_findings": sum(p["n_findings"] == 0 for p in patients),
            "dropped_crops": report.dropped_crops,
        },
    }
    write_cache(out, meta, rows, {s: np.stack(a) for s, a in arrays.items()}, patients)
    report.crops = len(rows)
    report.positives = sum(r["label"] for r in rows)
    report.per_site = {s: len(a) for s, a in sorted(arrays.items())}
    report.seconds = time.perf_counter() - start
    return report
