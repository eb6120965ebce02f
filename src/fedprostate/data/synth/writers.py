"""Write synthetic studies in the real public layouts: PI-CAI (MHA + NIfTI labels + marksheet) and
ProstateX (one DICOM series per sequence + findings CSV)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the library's own convention)

from fedprostate.data.formats.dicom import SERIES
from fedprostate.data.formats.picai import GLAND_DIR, LESION_DIR, image_paths
from fedprostate.data.synth.exam import SynthStudy
from fedprostate.data.synth.sites import SiteProfile

MARKSHEET_COLUMNS = [
    "patient_id", "study_id", "mri_date", "patient_age", "psa", "psad", "prostate_volume",
    "histopath_type", "lesion_GS", "lesion_ISUP", "case_ISUP", "case_csPCa", "center",
]  # fmt: skip
FINDINGS_COLUMNS = [
    "site", "patient_id", "study_id", "finding_id", "x", "y", "z", "zone", "isup", "clinsig",
    "kind", "radius_mm", "in_mask", "biopsied", "pirads", "mark_id",
]  # fmt: skip
READER_COLUMNS = ["patient_id", "study_id", "finding_id", "x", "y", "z", "zone", "pirads", "isup"]
PROSTATEX_COLUMNS = ["ProxID", "fid", "pos", "zone", "ClinSig", "pirads"]
FINDINGS = Path("truth/findings.csv")
READER_FINDINGS = Path("radiology/findings.csv")  # the PI-CAI layout's radiology marks
_UID_ROOT = "1.2.826.0.1.3680043.8.498"  # a public example root for generated UIDs


def write_picai_images(root: Path, study: SynthStudy) -> None:
    for seq, path in image_paths(root, study.patient_id, study.study_id).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(study.images[seq], str(path), True)


def write_picai_labels(root: Path, study: SynthStudy, case_level_only: bool) -> None:
    """Lesion (ISUP-valued) and gland masks on the T2 grid. ``case_level_only`` blanks the lesion
    mask of a positive case, like PI-CAI cases that only carry a case-level label."""
    name = f"{study.patient_id}_{study.study_id}.nii.gz"
    lesion = study.lesion_mask
    if case_level_only:
        blank = sitk.Image(lesion.GetSize(), sitk.sitkUInt8)
        blank.CopyInformation(lesion)
        lesion = blank
    for folder, img in ((LESION_DIR, lesion), (GLAND_DIR, study.gland_mask)):
        (Path(root) / folder).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(Path(root) / folder / name), True)


def _uid(*parts: object) -> str:
    """Deterministic DICOM UID (digits only, <= 64 chars) from the given parts."""
    digest = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24], 16)
    return f"{_UID_ROOT}.{digest}"


def write_prostatex_study(
    root: Path, study: SynthStudy, prox_id: str, seed: int, profile: SiteProfile
) -> Path:
    """One DICOM series per sequence under ``root/<ProxID>/<study_uid>/<series>/NNNN.dcm``.

    Every slice carries ImagePositionPatient/ImageOrientationPatient/PixelSpacing of its grid, so
    SimpleITK's ImageSeriesReader rebuilds the exact (possibly oblique) geometry. ADC is stored as
    integers in 1e-6 mm2/s, as ProstateX does."""
    study_uid = _uid(seed, "study", study.site, study.patient_id)
    study_dir = Path(root) / prox_id / study_uid
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for seq, (number, description) in SERIES.items():
        img = study.images[seq]
        if seq == "adc" and img.GetPixelID() == sitk.sitkFloat32:
            arr = np.round(sitk.GetArrayFromImage(img) * 1000.0).astype(np.int16)
            img = _with_geometry(arr, img)
        elif img.GetPixelID() != sitk.sitkInt16:
            img = sitk.Cast(img, sitk.sitkInt16)
        series_uid = _uid(seed, "series", study.site, study.patient_id, seq)
        folder = study_dir / f"{number}-{description}"
        folder.mkdir(parents=True, exist_ok=True)
        d = np.array(img.GetDirection()).reshape(3, 3)
        iop = "\\".join(f"{v:.6f}" for v in list(d[:, 0]) + list(d[:, 1]))
        shared = {
            "0008|0060": "MR", "0008|0070": profile.vendor.upper(), "0008|0080": study.site,
            "0008|103e": description, "0010|0010": prox_id, "0010|0020": prox_id,
            "0018|0015": "PROSTATE", "0018|0050": f"{img.GetSpacing()[2]:.4f}",
            "0018|0088": f"{img.GetSpacing()[2]:.4f}", "0020|000d": study_uid,
            "0020|000e": series_uid, "0020|0010": study.study_id, "0020|0011": str(number),
            "0020|0037": iop, "0008|0020": study.clinical["mri_date"].replace("-", ""),
            "0008|0021": study.clinical["mri_date"].replace("-", ""),
        }  # fmt: skip
        if seq == "hbv":
            shared["0018|9087"] = str(profile.b_value)
        for k in range(img.GetDepth()):
            sl = img[:, :, k : k + 1]
            for tag, value in shared.items():
                sl.SetMetaData(tag, value)
            pos = img.TransformIndexToPhysicalPoint((0, 0, k))
            sl.SetMetaData("0020|0032", "\\".join(f"{v:.4f}" for v in pos))
            sl.SetMetaData("0020|0013", str(k + 1))
            sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
            writer.SetFileName(str(folder / f"{k + 1:04d}.dcm"))
            writer.Execute(sl)
    return study_dir


def _with_geometry(arr: np.ndarray, like: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(like)
    return img


def write_picai_unlabeled(root: Path, study: SynthStudy) -> None:
    """Images only, under ``root/unlabeled/images``: nothing that could leak a label."""
    write_picai_images(Path(root) / "unlabeled", study)


def finding_rows(study: SynthStudy, case_level_only: bool) -> list[dict]:
    """``truth/findings.csv``: every lesion (biopsied or not) and every false-alarm mark, with the
    reader's PI-RADS and whether it was marked (``mark_id``). Ground truth: no reader reads it."""
    rows = []
    mark_of = {id(m.lesion): f"M{k}" for k, m in enumerate(study.marks, start=1) if m.lesion}
    biopsied = {id(f) for f in study.findings}
    lesions = zip(study.lesions, study.lesion_pirads, study.lesion_in_mask, strict=True)
    for fid, (les, pirads, in_mask) in enumerate(lesions, start=1):
        mark = mark_of.get(id(les), "")
        rows.append(
            _truth_row(study, f"L{fid}", les.center, les.zone, les.isup, les.kind,
                       les.radius_mm, in_mask and not case_level_only,
                       id(les) in biopsied or bool(mark), pirads, mark)
        )  # fmt: skip
    for k, m in enumerate(study.marks, start=1):
        if m.lesion is None:  # a false alarm on normal tissue, biopsied benign
            rows.append(_truth_row(study, f"N{k}", m.center, m.zone, 0, "normal", 0.0, False,
                                   True, m.pirads, f"M{k}"))  # fmt: skip
    return rows


def _truth_row(study, fid, center, zone, isup, kind, radius, in_mask, biopsied, pirads, mark):
    x, y, z = (round(float(c), 2) for c in center)
    return {
        "site": study.site, "patient_id": study.patient_id, "study_id": study.study_id,
        "finding_id": fid, "x": x, "y": y, "z": z, "zone": zone, "isup": isup,
        "clinsig": int(isup >= 2), "kind": kind, "radius_mm": round(float(radius), 2),
        "in_mask": int(in_mask), "biopsied": int(biopsied), "pirads": pirads, "mark_id": mark,
    }  # fmt: skip


def reader_rows(study: SynthStudy) -> list[dict]:
    """The site's radiology marks with their targeted-biopsy outcome (``radiology/findings.csv``).

    What a hospital has: location (LPS mm), zone and PI-RADS from the report, ISUP from the
    biopsy of that mark. Missed lesions are absent; false alarms are present (benign)."""
    rows = []
    for k, m in enumerate(study.marks, start=1):
        x, y, z = (round(float(c), 2) for c in m.center)
        rows.append(
            {"patient_id": study.patient_id, "study_id": study.study_id, "finding_id": f"M{k}",
             "x": x, "y": y, "z": z, "zone": m.zone, "pirads": m.pirads, "isup": m.isup}
        )  # fmt: skip
    return rows


def marksheet_row(study: SynthStudy) -> dict:
    return {"patient_id": study.patient_id, "study_id": study.study_id, **study.clinical,
            "center": study.site}  # fmt: skip


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def prostatex_rows(marks: list[dict]) -> list[dict]:
    """ProstateX-Findings-Train.csv rows from reader rows whose patient_id is the ProxID: the
    radiologist's marks with their biopsy outcome (ClinSig), as in ProstateX."""
    return [
        {"ProxID": f["patient_id"], "fid": f["finding_id"], "pos": f"{f['x']} {f['y']} {f['z']}",
         "zone": f["zone"], "ClinSig": "TRUE" if int(f["isup"]) >= 2 else "FALSE",
         "pirads": f["pirads"]}
        for f in marks
    ]  # fmt: skip
