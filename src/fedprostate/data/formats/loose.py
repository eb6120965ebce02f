"""Studies that are not (all) in a dataset layout: what ``predict`` reads.

* ``--study`` a dataset root in any layout ``data prepare`` reads (PI-CAI, ProstateX, Prostate158,
  generic CSV), or a folder *inside* one (a PI-CAI ``images/<patient>`` folder, a ProstateX
  ``<ProxID>`` folder): the nearest enclosing root (up to 3 levels up) is listed and the studies
  under that folder are kept. Such studies are read by the same reader, with the same seed and
  number of sampled negatives as the bundle's training cache, so they yield exactly the findings
  (and crops) ``data prepare`` produced.
* ``--study`` a bare folder with ``*t2w*``, ``*adc*``, ``*hbv*`` images (any SimpleITK format) or
  the three DICOM series of a study (ProstateX series descriptions): findings come from
  ``--findings``.
* ``--findings CSV``: ``x, y, z`` (LPS world mm) and optional ``finding_id``, ``zone``,
  ``patient_id`` replace the study's findings; with ``t2w, adc, hbv`` columns (paths relative to
  the CSV) the CSV alone describes the studies ("plain image paths").

Every study passes the same checks as in ``data prepare`` (``validate_study``). Given a
``skipped`` list, a study that cannot be read or checked is appended to it (a StudyError naming
file and patient) and the others are still returned; without one the first problem is raised.
"""

from __future__ import annotations

import csv
import dataclasses
from collections import defaultdict
from pathlib import Path

import SimpleITK as sitk  # noqa: N813

from fedprostate.data.checks import slug
from fedprostate.data.formats.base import (
    DataFormatError,
    read_csv_checked,
    read_image,
    validate_study,
)
from fedprostate.data.formats.dicom import find_series, read_series
from fedprostate.data.formats.registry import detect_format, list_studies, load_study
from fedprostate.data.study import SEQUENCES, ZONES, Finding, Study, StudyError

IMAGE_SUFFIXES = (".mha", ".mhd", ".nii.gz", ".nii", ".nrrd")


def _under(path: str, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _enclosing_root(path: Path) -> tuple[Path, str] | None:
    for candidate in [path, *list(path.parents)[:3]]:
        try:
            return candidate, detect_format(candidate)
        except DataFormatError:
            continue
    return None


def _bare_images(folder: Path) -> dict[str, sitk.Image]:
    """Images of a study folder that is not part of a dataset layout."""
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES):
            for seq in SEQUENCES:
                if seq in f.name.lower() and seq not in found:
                    found[seq] = f
    pid = folder.name
    if len(found) == 3:
        return {seq: read_image(found[seq], pid, seq) for seq in SEQUENCES}
    series, _ = find_series(folder, pid)
    if all(seq in series for seq in SEQUENCES):
        return {seq: read_series(series[seq], pid, seq) for seq in SEQUENCES}
    missing = [s for s in SEQUENCES if s not in found and s not in series]
    raise StudyError(
        pid,
        f"cannot read a study here: no {missing} image (files *t2w*/*adc*/*hbv* or DICOM)",
        folder,
    )


def _float(row: dict, key: str, pid: str, where: str) -> float:
    try:
        return float(row[key])
    except (TypeError, ValueError) as exc:
        raise StudyError(pid, f"{key}={row.get(key)!r} is not a number", where) from exc


def _table_findings(rows: list[dict], pid: str, where: str) -> list[Finding]:
    out = []
    for n, row in enumerate(rows, start=1):
        if row.get("_error"):
            raise StudyError(pid, f"findings row: {row['_error']}", f"{where}:{row['_line']}")
        zone = (row.get("zone") or "unknown").upper()
        world = tuple(_float(row, c, pid, f"{where}:{row['_line']}") for c in ("x", "y", "z"))
        out.append(
            Finding(row.get("finding_id") or f"F{n}", world, zone if zone in ZONES else "unknown")
        )
    return out


class _Skips:
    """Per-study errors: collected in ``skipped`` when given, else raised at once."""

    def __init__(self, skipped: list[StudyError] | None):
        self.skipped = skipped

    def __call__(self, err: StudyError) -> None:
        if self.skipped is None:
            raise err
        self.skipped.append(err)


def _studies_from_image_table(table: Path, skip: _Skips) -> list[Study]:
    """Studies described by a CSV with t2w/adc/hbv paths and finding coordinates."""
    rows = read_csv_checked(table, ("t2w", "adc", "hbv", "x", "y", "z"))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["_error"]:
            where = f"{table}:{row['_line']}"
            skip(StudyError(row.get("patient_id") or "?", f"row: {row['_error']}", where))
            continue
        key = (row.get("patient_id") or "study", row.get("study_id") or "1")
        groups[key].append(row)
    studies = []
    for (pid, sid), group in groups.items():
        first = group[0]
        paths = {seq: table.parent / first[seq] for seq in SEQUENCES}
        try:
            images = {seq: read_image(paths[seq], pid, seq) for seq in SEQUENCES}
            study = Study(
                site=first.get("site") or "unknown",
                patient_id=pid,
                study_id=sid,
                images=images,
                findings=_table_findings(group, pid, str(table)),
                source_paths={seq: str(p) for seq, p in paths.items()} | {"findings": str(table)},
            )
            validate_study(study)
        except StudyError as err:
            skip(err)
            continue
        studies.append(study)
    return studies


def _with_findings(study: Study, table: Path, rows: list[dict]) -> Study:
    own = [r for r in rows if r.get("patient_id") in (None, "", study.patient_id)]
    findings = _table_findings(own, study.patient_id, str(table))
    study = dataclasses.replace(study, findings=findings, case_label=None, lesion_mask=None)
    study.source_paths["findings"] = str(table)
    validate_study(study)
    return study


def _dataset_studies(path: Path, seed: int, negatives: int, patient: str | None, skip: _Skips):
    """Studies of the dataset that ``path`` is (or lies in); None when it is in none."""
    root = _enclosing_root(path)
    if root is None:
        return None
    folder, fmt = root
    _, refs, errors = list_studies(folder, fmt)
    if folder != path:
        refs = [r for r in refs if any(_under(p, path) for p in r.paths.values())]
        errors = [
            e
            for e in errors
            if e.patient_id == path.name or (e.path and _under(e.path.split(":")[0], path))
        ]
        if not refs and not errors:
            return None  # an unrelated layout above a bare study folder
    if patient is not None:
        refs = [r for r in refs if r.patient_id == patient]
        errors = [e for e in errors if e.patient_id == patient]
    if not refs and not errors:
        raise DataFormatError(f"{path}: no study found in this {fmt} dataset")
    for err in errors:
        skip(err)
    studies = []
    for ref in refs:
        try:
            studies.append(load_study(ref, seed=seed, negatives=negatives))
        except StudyError as err:
            skip(err)
    return studies


def resolve_studies(
    study: str | Path | None,
    findings: str | Path | None = None,
    seed: int = 0,
    negatives: int = 0,
    patient: str | None = None,
    skipped: list[StudyError] | None = None,
) -> list[Study]:
    """Read every study the inputs name (see the module docstring)."""
    skip = _Skips(skipped)
    table_rows = None
    if findings is not None:
        table = Path(findings)
        if not table.is_file():
            raise DataFormatError(f"{table}: findings CSV not found")
        with table.open(newline="", encoding="utf-8-sig") as fh:
            columns = next(csv.reader(fh), [])
        if all(seq in columns for seq in SEQUENCES):
            return _studies_from_image_table(table, skip)
        table_rows = read_csv_checked(table, ("x", "y", "z"))
    if study is None:
        raise DataFormatError("give --study PATH (or --findings CSV with t2w, adc, hbv columns)")
    path = Path(study).resolve()
    if not path.exists():
        raise DataFormatError(f"{path}: no such file or folder")
    studies = _dataset_studies(path, seed, negatives, patient, skip)
    if studies is None:
        if not path.is_dir():
            raise DataFormatError(f"{path}: not a study folder or dataset (see `predict --help`)")
        pid = patient or slug(path.name, "study")  # a folder name may be any text
        try:
            images = _bare_images(path)
            sid = slug(path.name, "1")
            study = Study("unknown", pid, sid, images, source_paths={"t2w": str(path)})
            if table_rows is None:
                validate_study(study)
            studies = [study]
        except StudyError as err:
            skip(err)
            studies = []
    if table_rows is not None:
        with_findings = []
        for study in studies:
            try:
                with_findings.append(_with_findings(study, Path(findings), table_rows))
            except StudyError as err:
                skip(err)
        studies = with_findings
    return studies
