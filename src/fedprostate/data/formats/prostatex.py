"""ProstateX reader: DICOM series + ``ProstateX-Findings-Train.csv``.

Layout under ``DIR``: ``<ProxID>/<study_uid>/<series_folder>/*.dcm`` and a findings CSV with
columns ProxID, fid, pos ("x y z"), zone, ClinSig. Series are grouped with GDCM series IDs
(``sitk.ImageSeriesReader``) and recognised by SeriesDescription (0008,103E): ``t2`` + ``tra`` →
T2, ``adc`` → ADC, ``bval`` (e.g. ``ep2d_diff_tra_CALC_BVAL``) → high-b DWI, and checked slice by
slice (``dicom.read_series``). The site is the InstitutionName (0008,0080) of the T2 series made
into an identifier (``checks.slug``), else ``prostatex``. A ProxID that is not a valid identifier
(it names a folder) or an unreadable row rejects that patient only.

``pos`` is in DICOM patient coordinates (LPS mm), the same frame SimpleITK reports, so it is used
unchanged: a voxel (column i, row j) of a slice lies at ``ImagePositionPatient + i·Δc·row_cos +
j·Δr·col_cos`` (``tests/test_readers_prostatex.py`` checks this by hand). The findings are biopsied
lesions, so benign ones are real negatives (``source="reader"``; an optional ``pirads`` column is
read when present). The CSV gives only ClinSig:
``isup`` is recorded as 2 (the csPCa lower bound) when significant, else 0. With only one study
folder expected per patient, the first (sorted) is used.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from fedprostate.data.checks import id_problem, slug
from fedprostate.data.formats.base import DataFormatError, StudyRef, read_csv_checked
from fedprostate.data.formats.dicom import find_series, read_series
from fedprostate.data.study import SEQUENCES, ZONES, Finding, Study, StudyError

NAME = "prostatex"
REQUIRED_COLUMNS = ("ProxID", "fid", "pos", "ClinSig")
FINDINGS_FILE = "ProstateX-Findings-Train.csv"


def detect(src: Path) -> bool:
    return src.is_dir() and any(src.glob("ProstateX-Findings*.csv"))


def findings_csv(src: Path) -> Path:
    preferred = src / FINDINGS_FILE
    if preferred.exists():
        return preferred
    found = sorted(src.glob("ProstateX-Findings*.csv"))
    if not found:
        raise DataFormatError(f"{src}: no ProstateX-Findings-Train.csv")
    return found[0]


def list_refs(src: Path, **_) -> tuple[list[StudyRef], list[StudyError]]:
    table = findings_csv(src)
    rows = read_csv_checked(table, REQUIRED_COLUMNS)
    by_patient: dict[str, list[dict]] = defaultdict(list)
    errors: list[StudyError] = []
    bad_patients: set[str] = set()
    for row in rows:
        pid = row["ProxID"]
        where = f"{table}:{row['_line']}"
        problem = row["_error"] or id_problem("ProxID", pid)
        if problem:
            errors.append(StudyError(pid or "?", f"findings row: {problem}", where))
            bad_patients.add(pid)
            continue
        if any(r["fid"] == row["fid"] for r in by_patient[pid]):
            errors.append(StudyError(pid, f"duplicated finding ID fid={row['fid']}", where))
            bad_patients.add(pid)
            continue
        by_patient[pid].append(row)
    refs = []
    for pid, findings in by_patient.items():
        if pid in bad_patients:
            continue
        studies = sorted(p for p in (src / pid).glob("*") if p.is_dir())
        if not studies:
            errors.append(StudyError(pid, "findings rows but no DICOM images", src / pid))
            continue
        ref = StudyRef(
            "prostatex", "prostatex", pid, studies[0].name, {"study_dir": str(studies[0])}
        )
        ref.paths["findings"] = str(table)
        ref.findings = findings
        refs.append(ref)
    return refs, errors


def _pirads(text: str | None) -> int | None:
    """The optional PI-RADS column (not in the public ProstateX table; our synth writes it)."""
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if 1 <= value <= 5 else None


def parse_pos(text: str, pid: str, where: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if len(values) != 3:
        raise StudyError(pid, f"finding pos {text!r} is not 'x y z'", where)
    return values  # type: ignore[return-value]


def load(ref: StudyRef, seed: int = 0, **_) -> Study:
    pid = ref.patient_id
    study_dir = Path(ref.paths["study_dir"])
    series, institution = find_series(study_dir, pid)
    for seq in SEQUENCES:
        if seq not in series:
            raise StudyError(
                pid, f"missing sequence {seq} (no matching SeriesDescription)", study_dir
            )
    images = {seq: read_series(series[seq], pid, seq) for seq in SEQUENCES}
    findings = []
    for row in ref.findings:
        zone = row.get("zone", "").upper() or "unknown"
        clinsig = row["ClinSig"].strip().upper() in ("TRUE", "1", "YES")
        findings.append(
            Finding(
                finding_id=f"F{row['fid']}",
                world_mm=parse_pos(row["pos"], pid, ref.paths["findings"]),
                zone=zone if zone in ZONES else "unknown",
                isup=2 if clinsig else 0,
                clinsig=clinsig,
                source="reader",
                pirads=_pirads(row.get("pirads")),
            )
        )
    return Study(
        site=slug(institution, "prostatex") if institution else "prostatex",
        patient_id=pid,
        study_id=ref.study_id,
        images=images,
        findings=findings,
        case_label=int(any(f.clinsig for f in findings)),
        source_paths={
            "t2w": str(Path(series["t2w"][0]).parent),
            "findings": ref.paths["findings"],
            "adc": str(Path(series["adc"][0]).parent),
            "hbv": str(Path(series["hbv"][0]).parent),
        },
    )
