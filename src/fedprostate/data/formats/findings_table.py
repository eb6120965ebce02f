"""A site's radiology findings table: the locations its radiologists marked, per study.

Columns (CSV, UTF-8): ``patient_id, study_id, x, y, z`` (LPS world mm, the DICOM/ITK frame)
required; ``finding_id``, ``zone`` (PZ/TZ/AS/SV), ``pirads`` (1-5), ``isup`` (0-5, the biopsy
outcome) or ``label`` (1 = csPCa) optional. A row with a biopsy outcome is labelled by it; a row
without one is labelled by the csPCa mask (overlap, ``base.label_from_mask``). The mask never
places a finding.

Every problem with one row rejects that finding, not its study nor the table: a row that is not
a number, a PI-RADS outside 1-5, an ISUP outside 0-5, a duplicated finding (same id, or within
``DUPLICATE_MM`` of an earlier one), a point outside the T2 volume or the gland, a csPCa label on
a case whose marksheet says no csPCa, or a patient/study the dataset does not have.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.formats.base import inside, read_csv_checked
from fedprostate.data.study import ZONES, Finding, StudyError

REQUIRED = ("patient_id", "study_id", "x", "y", "z")
DUPLICATE_MM = 1.0
GLAND_TOLERANCE_MM = 5.0  # a mark may sit on the gland edge (AI gland masks err by a few mm)


class FindingError(StudyError):
    """One finding that cannot be used; its study is kept (``rejected.csv`` names the finding)."""

    def __init__(self, patient_id: str, finding_id: str, reason: str, path: str | Path = ""):
        self.finding_id = finding_id
        super().__init__(patient_id, f"finding {finding_id}: {reason}", path)


@dataclass
class FindingsTable:
    path: Path
    rows: dict[tuple[str, str], list[dict]]  # (patient_id, study_id) → rows in file order


def read_table(path: str | Path) -> FindingsTable:
    """Rows grouped per study; whole-file problems (missing columns, not a CSV) raise."""
    path = Path(path)
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in read_csv_checked(path, REQUIRED):
        rows[(row["patient_id"], row["study_id"])].append(row)
    return FindingsTable(path, dict(rows))


def unknown_rows(table: FindingsTable, known: set[tuple[str, str]]) -> list[FindingError]:
    """Rows naming a patient/study the dataset does not have."""
    return [
        FindingError(
            pid,
            row.get("finding_id") or f"row {row['_line']}",
            f"patient/study {pid}/{sid} is not in the dataset",
            f"{table.path}:{row['_line']}",
        )  # fmt: skip
        for (pid, sid), group in table.rows.items()
        if (pid, sid) not in known
        for row in group
    ]


def _number(row: dict, key: str, pid: str, fid: str, where: str) -> float:
    try:
        value = float(row[key])
    except (TypeError, ValueError):
        raise FindingError(pid, fid, f"{key}={row.get(key)!r} is not a number", where) from None
    if not np.isfinite(value):
        raise FindingError(pid, fid, f"{key}={row.get(key)!r} is not finite", where)
    return value


def _optional_int(row: dict, key: str, low: int, high: int, pid, fid, where) -> int | None:
    text = (row.get(key) or "").strip()
    if not text:
        return None
    value = _number(row, key, pid, fid, where)
    if value != int(value) or not low <= value <= high:
        raise FindingError(pid, fid, f"{key}={text!r} outside {low}-{high}", where)
    return int(value)


def parse_row(row: dict, pid: str, fid: str, where: str) -> Finding:
    """One row as a reader finding (its biopsy outcome, if any, in isup/clinsig)."""
    world = tuple(_number(row, c, pid, fid, where) for c in ("x", "y", "z"))
    pirads = _optional_int(row, "pirads", 1, 5, pid, fid, where)
    isup = _optional_int(row, "isup", 0, 5, pid, fid, where)
    label = _optional_int(row, "label", 0, 1, pid, fid, where)
    if isup is not None and label is not None and int(isup >= 2) != label:
        raise FindingError(pid, fid, f"isup={isup} and label={label} disagree", where)
    if isup is None and label is not None:
        isup = 2 if label else 0
    zone = (row.get("zone") or "unknown").strip().upper()
    return Finding(
        fid, world, zone if zone in ZONES else "unknown", isup or 0, bool(isup and isup >= 2),
        "reader", pirads=pirads,
    )  # fmt: skip


def has_outcome(row: dict) -> bool:
    return bool((row.get("isup") or "").strip() or (row.get("label") or "").strip())


def study_findings(
    rows: list[dict],
    pid: str,
    where: str,
    t2: sitk.Image,
    gland: sitk.Image | None,
    case_label: int | None,
    label_by_mask,
) -> tuple[list[Finding], list[FindingError]]:
    """The usable reader findings of one study and the rejected ones (with reasons).

    ``label_by_mask(finding)`` labels a row without a biopsy outcome (or raises FindingError)."""
    kept: list[Finding] = []
    rejected: list[FindingError] = []
    gland_dist = None
    if gland is not None:
        gland_dist = sitk.SignedMaurerDistanceMap(gland, insideIsPositive=False,
                                                  squaredDistance=False, useImageSpacing=True)  # fmt: skip
    for n, row in enumerate(rows, start=1):
        fid = (row.get("finding_id") or "").strip() or f"F{n}"
        at = f"{where}:{row['_line']}"
        try:
            finding = parse_row(row, pid, fid, at)
            if not inside(t2, finding.world_mm):
                raise FindingError(pid, fid, "lies outside the T2 volume", at)
            if gland_dist is not None:
                idx = gland_dist.TransformPhysicalPointToIndex(finding.world_mm)
                idx = tuple(
                    int(np.clip(i, 0, s - 1))
                    for i, s in zip(idx, gland_dist.GetSize(), strict=True)
                )
                if gland_dist[idx] > GLAND_TOLERANCE_MM:
                    raise FindingError(
                        pid, fid, f"lies {gland_dist[idx]:.1f} mm outside the gland", at
                    )
            if any(k.finding_id == fid for k in kept):
                raise FindingError(pid, fid, "duplicated finding id", at)
            if any(np.linalg.norm(np.subtract(k.world_mm, finding.world_mm)) < DUPLICATE_MM
                   for k in kept):  # fmt: skip
                raise FindingError(
                    pid, fid, f"duplicates an earlier finding (< {DUPLICATE_MM} mm)", at
                )
            if not has_outcome(row):
                finding = label_by_mask(finding)
            if finding.clinsig and case_label == 0:
                raise FindingError(pid, fid, "labelled csPCa but the case says case_csPCa=NO", at)
        except FindingError as err:
            rejected.append(err)
            continue
        kept.append(finding)
    return kept, rejected
