"""PI-CAI reader: ``images/`` + the picai_labels layout, findings from reading.

Layout under ``DIR``::

    images/<pid>/<pid>_<sid>_{t2w,adc,hbv}.mha
    labels/csPCa_lesion_delineations/<labels>/<pid>_<sid>.nii.gz     (labels option, see below)
    labels/anatomical_delineations/whole_gland/AI/Bosma22b/<pid>_<sid>.nii.gz
    labels/clinical_information/marksheet.csv    (or DIR/marksheet.csv)
    radiology/findings.csv                       (optional: the site's radiology marks)

``labels`` is one of ``human_expert/resampled`` (default, on the T2 grid), ``human_expert/original``
or ``AI/Bosma22a``. A mask must lie on the T2 grid or on the ADC grid (resampled onto the T2 by
nearest neighbour); any other grid is rejected unless ``resample_masks`` (see ``data.checks``).

Findings (lesion mode) are locations nobody placed by looking at the answer:

* ``findings=PATH`` (or ``auto`` when ``radiology/findings.csv`` exists): the radiologist's marks
  (``findings_table``: PI-RADS, biopsy outcome), ``source="reader"``; a study the table lists no
  mark for is kept with no finding (the radiologist saw nothing: negative by reading);
* ``findings=proposals`` (``auto`` without a table): label-free candidates of restricted
  diffusion (``data/proposals.py``), ``source="proposal"``.

The csPCa mask only *labels* findings without a biopsy outcome (overlap, ``label_from_mask``).
A csPCa-positive case whose mask is empty (case-level-only label) cannot label proposals:
``prepare`` excludes it from lesion mode with that reason and keeps it for organ mode. A mask with
a lesion on a case marked ``case_csPCa=NO`` is rejected as contradictory. ``negatives`` extra
locations of normal gland tissue (≥ 10 mm from every lesion voxel, seeded by (run seed, study))
are added as ``source="sampled"``: training negatives, never in a headline metric.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.checks import ids_problem, mask_on_t2
from fedprostate.data.formats.base import (
    DataFormatError,
    StudyRef,
    check_label_values,
    label_from_mask,
    read_csv_checked,
    read_image,
    sample_negatives,
    study_rng,
)
from fedprostate.data.formats.findings_table import read_table, study_findings, unknown_rows
from fedprostate.data.proposals import propose
from fedprostate.data.study import SEQUENCES, Finding, Study, StudyError

NAME = "picai"
LABEL_FOLDERS = ("human_expert/resampled", "human_expert/original", "AI/Bosma22a")
GLAND_FOLDER = "anatomical_delineations/whole_gland/AI/Bosma22b"
# The layout, relative to the dataset root (also what ``data synth`` writes).
MARKSHEET = Path("labels/clinical_information/marksheet.csv")
LESION_DIR = Path("labels/csPCa_lesion_delineations/human_expert/resampled")
GLAND_DIR = Path("labels") / GLAND_FOLDER
REQUIRED_COLUMNS = ("patient_id", "study_id", "case_csPCa")
CLINICAL_COLUMNS = {
    "psa": "psa",
    "psad": "psad",
    "prostate_volume": "prostate_volume",
    "patient_age": "age",
}


def detect(src: Path) -> bool:
    return (src / MARKSHEET).exists() or (
        (src / "marksheet.csv").exists() and (src / "images").is_dir()
    )


def marksheet_path(src: Path) -> Path:
    for path in (src / MARKSHEET, src / "marksheet.csv"):
        if path.exists():
            return path
    return src / MARKSHEET


def image_paths(src: Path, pid: str, sid: str) -> dict[str, Path]:
    """``images/<pid>/<pid>_<sid>_{t2w,adc,hbv}.mha``."""
    return {seq: Path(src) / "images" / pid / f"{pid}_{sid}_{seq}.mha" for seq in SEQUENCES}


def _paths(src: Path, pid: str, sid: str, labels: str) -> dict[str, str]:
    key = f"{pid}_{sid}"
    paths = {seq: str(p) for seq, p in image_paths(src, pid, sid).items()}
    label_root = src / "labels" / "csPCa_lesion_delineations" / labels
    paths["lesion"] = str(label_root / f"{key}.nii.gz")
    paths["gland"] = str(src / "labels" / GLAND_FOLDER / f"{key}.nii.gz")
    return paths


READER_TABLE = Path("radiology/findings.csv")
FINDINGS_MODES = ("auto", "proposals", "none")  # or a path to a findings table


def findings_table_path(src: Path, findings: str) -> Path | None:
    """The findings table ``findings`` names (None: proposals or no findings)."""
    if findings in ("proposals", "none"):
        return None
    if findings == "auto":
        return src / READER_TABLE if (src / READER_TABLE).is_file() else None
    path = Path(findings)
    if not path.is_file():
        raise DataFormatError(f"--findings {findings}: no such findings table")
    return path


def list_refs(
    src: Path, labels: str = "human_expert/resampled", findings: str = "auto", **_
) -> tuple[list[StudyRef], list[StudyError]]:
    if labels not in LABEL_FOLDERS:
        raise DataFormatError(f"--labels {labels!r}: choose one of {LABEL_FOLDERS}")
    table_path = findings_table_path(src, findings)
    table = read_table(table_path) if table_path else None
    source = "none" if findings == "none" else ("reader" if table else "proposal")
    sheet = marksheet_path(src)
    rows = read_csv_checked(sheet, REQUIRED_COLUMNS)
    refs, errors, seen = [], [], set()
    in_sheet = {(row.get("patient_id", ""), row.get("study_id", "")) for row in rows}
    for row in rows:
        pid, sid = row.get("patient_id", ""), row.get("study_id", "")
        where = f"{sheet}:{row['_line']}"
        if row["_error"]:
            errors.append(StudyError(pid or "?", f"marksheet row: {row['_error']}", where))
            continue
        if not pid or not sid:
            errors.append(
                StudyError(pid or "?", "marksheet row without patient_id/study_id", where)
            )
            continue
        if (pid, sid) in seen:
            errors.append(StudyError(pid, f"duplicated ID {pid}_{sid} in marksheet", where))
            continue
        seen.add((pid, sid))
        site = row.get("center") or "picai"
        if problem := ids_problem(pid, sid, site):  # ids become file paths below
            errors.append(StudyError(pid, f"marksheet row: {problem}", where))
            continue
        paths = _paths(src, pid, sid, labels)
        if not any(Path(paths[s]).exists() for s in SEQUENCES):
            errors.append(StudyError(pid, f"marksheet row {pid}_{sid} has no images", where))
            continue
        ref = StudyRef("picai", site, pid, sid, paths, row=row, finding_source=source)
        if table is not None:
            ref.findings = table.rows.get((pid, sid), [])
            ref.paths["findings"] = str(table.path)
        refs.append(ref)
    if table is not None:  # (marks of a study rejected above go with their study)
        errors += unknown_rows(table, in_sheet)
    return refs, errors


def _float(value: str | None) -> float:
    try:
        out = float(value) if value not in (None, "") else math.nan
    except ValueError:
        out = math.nan
    return out


def case_label_of(row: dict[str, str], pid: str, where: str) -> int:
    value = (row.get("case_csPCa") or "").strip().upper()
    if value in ("YES", "1", "TRUE"):
        return 1
    if value in ("NO", "0", "FALSE"):
        return 0
    raise StudyError(pid, f"case_csPCa {value!r} is not YES/NO", where)


def load(
    ref: StudyRef, seed: int = 0, negatives: int = 2, resample_masks: bool = False, **_
) -> Study:
    pid = ref.patient_id
    images = {seq: read_image(ref.paths[seq], pid, seq) for seq in SEQUENCES}
    t2 = images["t2w"]
    case_label = case_label_of(ref.row, pid, ref.paths["t2w"])

    lesion = None
    lesion_path = Path(ref.paths["lesion"])
    if lesion_path.exists():
        lesion = read_image(lesion_path, pid, "lesion mask")
        check_label_values(lesion, pid, str(lesion_path))
        lesion = mask_on_t2(
            sitk.Cast(lesion, sitk.sitkUInt8), t2, pid, str(lesion_path), "lesion mask",
            also={"adc": images["adc"]}, resample=resample_masks,
        )  # fmt: skip
        if not sitk.GetArrayViewFromImage(lesion).any():
            lesion = None
    if lesion is not None and case_label == 0:
        raise StudyError(pid, "lesion mask has csPCa voxels but case_csPCa=NO", lesion_path)

    gland = None
    gland_path = Path(ref.paths["gland"])
    if gland_path.exists():
        gland = read_image(gland_path, pid, "gland mask")
        gland = mask_on_t2(
            sitk.Cast(gland > 0, sitk.sitkUInt8), t2, pid, str(gland_path), "gland mask",
            also={"adc": images["adc"]}, resample=resample_masks,
        )  # fmt: skip
        if not sitk.GetArrayViewFromImage(gland).any():
            gland = None
    study = Study(ref.site, pid, ref.study_id, images, gland_mask=gland, lesion_mask=lesion,
                  case_label=case_label,
                  source_paths={k: v for k, v in ref.paths.items() if Path(v).exists()})  # fmt: skip

    def label_by_mask(finding: Finding) -> Finding:
        if lesion is not None:
            return label_from_mask(finding, lesion)
        if case_label == 0:
            return dataclasses.replace(finding, isup=0, clinsig=False)
        raise StudyError(
            pid,
            "excluded from lesion mode: csPCa-positive case with an empty lesion mask "
            "(case-level label only) cannot label its findings; kept for organ mode",
            lesion_path,
        )

    findings: list[Finding] = []
    if ref.finding_source == "reader":
        findings, rejected = study_findings(
            ref.findings, pid, ref.paths["findings"], t2, gland, case_label, label_by_mask
        )
        study.rejected_findings = [(e.finding_id, e.reason) for e in rejected]
    elif ref.finding_source == "proposal":
        findings = [label_by_mask(f) for f in propose(study)]
    rng = study_rng(seed, ref.key)
    study.findings = findings + sample_negatives(t2, gland, lesion, negatives, rng)

    clinical = {name: _float(ref.row.get(col)) for col, name in CLINICAL_COLUMNS.items()}
    study.clinical = {k: v for k, v in clinical.items() if not np.isnan(v)}
    return study
