"""From hospital DICOM to the PI-CAI layout with picai_prep's ``dcm2mha``, then our PI-CAI reader.

picai_prep (the ``[dicom]`` extra) converts DICOM series to ``<out>/<patient_id>/<patient_id>_
<study_id>_{t2w,adc,hbv}.mha`` given a settings JSON: an ``archive`` (one entry per series
folder: patient_id, study_id, path) and ``mappings`` (which SeriesDescription values are T2, ADC
and high-b DWI). :func:`dcm2mha_settings` writes that JSON from a DICOM tree: it reads every
series header (SimpleITK, no pixel data), takes PatientID and StudyID (else StudyInstanceUID)
and sorts each series into t2w / adc / hbv by its SeriesDescription with the rules of
``formats/dicom.py`` (ProstateX names: ``t2 ... tra``, ``adc``, ``bval``); ``extra`` adds a
site's own descriptions. :func:`marksheet_template` lists the studies for the marksheet the
PI-CAI reader needs (``case_csPCa`` YES/NO is left for the site to fill in).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import SimpleITK as sitk  # noqa: N813

from fedprostate.data.formats.base import DataFormatError
from fedprostate.data.formats.dicom import sequence_of
from fedprostate.data.study import SEQUENCES

MARKSHEET_COLUMNS = ("patient_id", "study_id", "case_csPCa", "center")


NOT_DICOM = (".csv", ".json", ".txt", ".md", ".mha", ".mhd", ".nii", ".gz", ".png", ".zip")


def _series_header(folder: Path) -> dict[str, str] | None:
    """PatientID, study id and SeriesDescription of the first DICOM series in ``folder``."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in NOT_DICOM]
    if not files:
        return None
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "No Series were found" per plain folder
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        return None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if not ids:
        return None
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None

    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""

    return {
        "patient_id": tag("0010|0020"),
        "study_id": tag("0020|0010") or tag("0020|000d"),
        "description": tag("0008|103e"),
        "institution": tag("0008|0080"),
    }


def dcm2mha_settings(dicom_root: str | Path, extra: dict[str, list[str]] | None = None) -> dict:
    """picai_prep's dcm2mha settings for every recognised series under ``dicom_root``."""
    root = Path(dicom_root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: no such DICOM folder")
    archive, mappings = [], {seq: set((extra or {}).get(seq, [])) for seq in SEQUENCES}
    for folder in sorted(p for p in [root, *root.rglob("*")] if p.is_dir()):
        header = _series_header(folder)
        if header is None or not header["patient_id"] or not header["study_id"]:
            continue
        seq = sequence_of(header["description"]) or next(
            (s for s, names in mappings.items() if header["description"] in names), None
        )
        if seq is None:
            continue
        mappings[seq].add(header["description"])
        archive.append(
            {
                "patient_id": header["patient_id"],
                "study_id": header["study_id"],
                "path": folder.relative_to(root).as_posix(),
            }
        )
    if not archive:
        raise DataFormatError(f"{root}: no T2/ADC/high-b DICOM series found")
    return {
        "mappings": {seq: {"SeriesDescription": sorted(v)} for seq, v in mappings.items() if v},
        "archive": archive,
    }


def marksheet_template(settings: dict, dicom_root: str | Path) -> list[dict[str, str]]:
    """One marksheet row per study of ``settings`` (``case_csPCa`` empty: YES/NO to fill in)."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for item in settings["archive"]:
        key = (item["patient_id"], item["study_id"])
        if key not in rows:
            header = _series_header(Path(dicom_root) / item["path"]) or {}
            rows[key] = {"patient_id": key[0], "study_id": key[1], "case_csPCa": "",
                         "center": header.get("institution", "")}  # fmt: skip
    return list(rows.values())


def write_settings(settings: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return path


def write_marksheet(rows: list[dict[str, str]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MARKSHEET_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path
