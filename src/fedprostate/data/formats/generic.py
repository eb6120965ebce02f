"""Generic reader: one CSV (``--src`` is the CSV itself, or a folder holding ``findings.csv``), one row
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
x, y, z     finding centre, LPS world mm (ITK/DICOM convention): a location a reader
            marked; leave all three empty for a study without findings
pirads      optional PI-RADS v2.1 score of the mark (1..5)
label       1 = clinically significant, 0 = not (required)
zone        PZ / TZ / AS / SV / unknown (may be empty)
isup        0..5 (may be empty: 2 when label=1, else 0)
gland       optional path of a gland mask on the T2 (or ADC) grid; other grids
            need ``--resample-masks`` (needed for organ mode)
finding_id  optional; default F1, F2, ... in row order per study
=========== =============================================================

Case label of a study = max ``label`` over its findings. Every row sharing (patient_id,
study_id) must name the same images and site; a repeated finding_id is a duplicated ID. A row
that cannot be read (wrong number of fields, a non-UTF-8 byte) or whose ids are not valid
identifiers (``data.checks.ID_PATTERN``) is rejected alone; the other rows are kept.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.checks import ids_problem, mask_on_t2
from fedprostate.data.formats.base import StudyRef, read_csv_checked, read_image
from fedprostate.data.study import SEQUENCES, ZONES, Finding, Study, StudyError

NAME = "generic"
GENERIC_COLUMNS = ("patient_id", "study_id", "site", "t2w", "adc", "hbv", "x", "y", "z", "label")


def detect(src: Path) -> bool:
    return (src.is_file() and src.suffix == ".csv") or (src / "findings.csv").exists()


def _generic_csv(src: Path) -> Path:
    return src if src.is_file() else src / "findings.csv"


def list_refs(src: Path, **_) -> tuple[list[StudyRef], list[StudyError]]:
    table = _generic_csv(src)
    rows = read_csv_checked(table, GENERIC_COLUMNS)
    base = table.parent
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    errors: list[StudyError] = []
    spoiled: set[tuple[str, str]] = set()  # a study with an unreadable row lacks a finding
    for row in rows:
        where = f"{table}:{row['_line']}"
        problem = row["_error"] or ids_problem(row["patient_id"], row["study_id"], row["site"])
        if problem:
            errors.append(
                StudyError(row.get("patient_id") or "?", f"row: {problem} (study skipped)", where)
            )
            spoiled.add((row["patient_id"], row["study_id"]))
            continue
        groups[(row["patient_id"], row["study_id"])].append(row)
    refs = []
    for (pid, sid), group in groups.items():
        if (pid, sid) in spoiled:
            continue
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
    pirads = None
    if (row.get("pirads") or "").strip():
        try:
            pirads = int(row["pirads"])
        except ValueError:
            pirads = 0
        if not 1 <= pirads <= 5:
            raise StudyError(
                pid, f"finding {row['finding_id']}: pirads {row['pirads']!r} outside 1-5", where
            )
    zone = (row.get("zone") or "unknown").upper()
    return Finding(
        row["finding_id"], world, zone if zone in ZONES else "unknown", isup, bool(label),
        "reader", pirads=pirads,
    )  # fmt: skip


def load(ref: StudyRef, seed: int = 0, resample_masks: bool = False, **_) -> Study:
    pid = ref.patient_id
    for seq in SEQUENCES:
        if seq not in ref.paths:
            raise StudyError(pid, f"missing sequence {seq} (empty path)", ref.paths["findings"])
    images = {seq: read_image(ref.paths[seq], pid, seq) for seq in SEQUENCES}
    findings = [f for r in ref.findings if (f := _generic_finding(r, pid, ref.paths["findings"]))]
    gland = None
    if "gland" in ref.paths:
        mask = sitk.Cast(read_image(ref.paths["gland"], pid, "gland") > 0, sitk.sitkUInt8)
        also = {"adc": images["adc"]}
        gland = mask_on_t2(
            mask, images["t2w"], pid, ref.paths["gland"], "gland mask", also, resample_masks
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
