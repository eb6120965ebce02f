"""Prostate158 and generic readers.

**Prostate158** — ``DIR/<id>/{t2,adc,dwi}.nii.gz`` with tumour masks ``t2_tumor_reader1.nii.gz``
(on the T2 grid; ``adc_tumor_reader1.nii.gz`` on the ADC grid is used when the T2 one is absent)
and zonal anatomy ``t2_anatomy_reader1.nii.gz`` (1 = TZ, 2 = PZ; their union is the gland).
Findings are the connected components of the tumour mask; its masks are binary (1 = csPCa), so
as with AI masks ``isup=1`` is kept and the finding counts as csPCa. The zone is read from the
anatomy mask at the centroid. Case label = any tumour voxel. Negatives are sampled as for PI-CAI.
Site = ``prostate158``, patient_id = study_id = the folder name.

**Generic** — one CSV (``--src`` is the CSV itself, or a folder holding ``findings.csv``), one row
per finding, paths relative to the CSV's folder, images in any SimpleITK format (NIfTI, MHA, ...):

=========== =============================================================
column      meaning
=========== =============================================================
patient_id  patient identifier (required)
study_id    study identifier (required)
site        hospital / collection name (required)
t2w         path of the T2-weighted image (required)
adc         path of the ADC map (required; units detected from the values)
hbv         path of the high-b DWI (required)
x, y, z     finding centre, LPS world mm (ITK/DICOM convention); leave all
            three empty for a study without findings (organ mode only)
label       1 = clinically significant, 0 = not (required)
zone        PZ / TZ / AS / SV / unknown (may be empty)
isup        0..5 (may be empty: 2 when label=1, else 0)
gland       optional path of a gland mask on any grid (needed for organ mode)
finding_id  optional; default F1, F2, ... in row order per study
=========== =============================================================

Case label of a study = max ``label`` over its findings. Every row sharing (patient_id,
study_id) must name the same images and site; a repeated finding_id is a duplicated ID.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.formats.base import (
    StudyRef,
    check_label_values,
    mask_findings,
    on_grid,
    read_csv_checked,
    read_image,
    sample_negatives,
    study_rng,
)
from fedprostate.data.study import SEQUENCES, ZONES, Finding, Study, StudyError

P158_FILES = {"t2w": "t2.nii.gz", "adc": "adc.nii.gz", "hbv": "dwi.nii.gz"}
P158_ZONES = {1: "TZ", 2: "PZ"}
GENERIC_COLUMNS = ("patient_id", "study_id", "site", "t2w", "adc", "hbv", "x", "y", "z", "label")


def list_prostate158(src: Path, **_) -> tuple[list[StudyRef], list[StudyError]]:
    refs = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        if not any((folder / name).exists() for name in P158_FILES.values()):
            continue
        paths = {seq: str(folder / name) for seq, name in P158_FILES.items()}
        for name in ("t2_tumor_reader1", "adc_tumor_reader1", "t2_anatomy_reader1"):
            paths[name] = str(folder / f"{name}.nii.gz")
        refs.append(StudyRef("prostate158", "prostate158", folder.name, folder.name, paths))
    return refs, []


def load_prostate158(ref: StudyRef, seed: int = 0, negatives: int = 2, **_) -> Study:
    pid = ref.patient_id
    images = {seq: read_image(ref.paths[seq], pid, seq) for seq in SEQUENCES}
    t2 = images["t2w"]
    lesion = None
    for name in ("t2_tumor_reader1", "adc_tumor_reader1"):
        if Path(ref.paths[name]).exists():
            mask = read_image(ref.paths[name], pid, "tumour mask")
            check_label_values(mask, pid, ref.paths[name])
            lesion = on_grid(sitk.Cast(mask, sitk.sitkUInt8), t2)
            break
    gland = anatomy = None
    if Path(ref.paths["t2_anatomy_reader1"]).exists():
        anatomy = on_grid(
            sitk.Cast(
                read_image(ref.paths["t2_anatomy_reader1"], pid, "anatomy mask"), sitk.sitkUInt8
            ),
            t2,
        )
        gland = sitk.Cast(anatomy > 0, sitk.sitkUInt8)
    findings = mask_findings(lesion, prefix="T") if lesion is not None else []
    if anatomy is not None:
        findings = [_with_zone(f, anatomy) for f in findings]
    findings += sample_negatives(t2, gland, lesion, negatives, study_rng(seed, ref.key))
    return Study(
        site=ref.site,
        patient_id=pid,
        study_id=ref.study_id,
        images=images,
        findings=findings,
        gland_mask=gland,
        lesion_mask=lesion,
        case_label=int(any(f.clinsig for f in findings)),
        source_paths={k: v for k, v in ref.paths.items() if Path(v).exists()},
    )


def _with_zone(finding: Finding, anatomy: sitk.Image) -> Finding:
    idx = anatomy.TransformPhysicalPointToIndex(finding.world_mm)
    size = anatomy.GetSize()
    value = anatomy[idx] if all(0 <= i < s for i, s in zip(idx, size, strict=True)) else 0
    zone = P158_ZONES.get(int(value), "unknown")
    return Finding(
        finding.finding_id,
        finding.world_mm,
        zone,
        finding.isup,
        finding.clinsig,
        finding.source,
        finding.radius_mm,
    )


def _generic_csv(src: Path) -> Path:
    return src if src.is_file() else src / "findings.csv"


def list_generic(src: Path, **_) -> tuple[list[StudyRef], list[StudyError]]:
    table = _generic_csv(src)
    rows = read_csv_checked(table, GENERIC_COLUMNS)
    base = table.parent
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    errors: list[StudyError] = []
    for row in rows:
        if row["_ragged"]:
            where = f"{table}:{row['_line']}"
            errors.append(
                StudyError(
                    row.get("patient_id") or "?", "row has the wrong number of fields", where
                )
            )
            continue
        groups[(row["patient_id"], row["study_id"])].append(row)
    refs = []
    for (pid, sid), group in groups.items():
        where = f"{table}:{group[0]['_line']}"
        keys = {(r["site"], r["t2w"], r["adc"], r["hbv"], r.get("gland", "")) for r in group}
        if len(keys) > 1:
            errors.append(
                StudyError(
                    pid, f"duplicated ID {pid}_{sid}: rows disagree on site or images", where
                )
            )
            continue
        ids = [r.get("finding_id") or f"F{n}" for n, r in enumerate(group, start=1)]
        if len(set(ids)) != len(ids):
            errors.append(StudyError(pid, f"duplicated finding ID in study {sid}", where))
            continue
        first = group[0]
        paths = {seq: str(base / first[seq]) for seq in SEQUENCES if first[seq]}
        if first.get("gland"):
            paths["gland"] = str(base / first["gland"])
        if not any(Path(p).exists() for p in paths.values()):
            errors.append(StudyError(pid, f"row {pid}_{sid} has no images", where))
            continue
        paths["findings"] = str(table)
        for row, fid in zip(group, ids, strict=True):
            row["finding_id"] = fid
        refs.append(StudyRef("generic", first["site"], pid, sid, paths, findings=group))
    return refs, errors


def _generic_finding(row: dict, pid: str, where: str) -> Finding | None:
    coords = [row.get(c, "") for c in ("x", "y", "z")]
    if all(c == "" for c in coords):
        return None
    try:
        world = tuple(float(c) for c in coords)
        label = int(float(row["label"]))
        isup = int(float(row["isup"])) if row.get("isup") else (2 if label else 0)
    except ValueError as exc:
        raise StudyError(pid, f"finding {row['finding_id']}: bad number ({exc})", where) from exc
    if label not in (0, 1) or not 0 <= isup <= 5:
        raise StudyError(pid, f"finding {row['finding_id']}: label/isup out of range", where)
    zone = (row.get("zone") or "unknown").upper()
    return Finding(
        row["finding_id"], world, zone if zone in ZONES else "unknown", isup, bool(label)
    )


def load_generic(ref: StudyRef, seed: int = 0, **_) -> Study:
    pid = ref.patient_id
    for seq in SEQUENCES:
        if seq not in ref.paths:
            raise StudyError(pid, f"missing sequence {seq} (empty path)", ref.paths["findings"])
    images = {seq: read_image(ref.paths[seq], pid, seq) for seq in SEQUENCES}
    findings = [f for r in ref.findings if (f := _generic_finding(r, pid, ref.paths["findings"]))]
    gland = None
    if "gland" in ref.paths:
        gland = on_grid(
            sitk.Cast(read_image(ref.paths["gland"], pid, "gland") > 0, sitk.sitkUInt8),
            images["t2w"],
        )
    labels = [int(float(r["label"] or 0)) for r in ref.findings]
    return Study(
        site=ref.site,
        patient_id=pid,
        study_id=ref.study_id,
        images=images,
        findings=findings,
        gland_mask=gland,
        case_label=int(np.max(labels)) if labels else 0,
        source_paths={k: v for k, v in ref.paths.items()},
    )
