"""DICOM series: grouping files into series, recognising the sequence, reading a 3D volume.

Series are grouped with GDCM series IDs (``sitk.ImageSeriesReader``) and recognised by
SeriesDescription (0008,103E) as ProstateX names them: ``t2`` + ``tra`` → T2, ``adc`` → ADC,
``bval`` (e.g. ``ep2d_diff_tra_CALC_BVAL``) → high-b DWI. ``SERIES`` holds the descriptions
``data synth`` writes, which these rules recognise.

A series is read only when it is whole (:func:`check_slices`): at least ``MIN_SLICES`` slices,
every slice with PixelSpacing, ImagePositionPatient and ImageOrientationPatient, one orientation,
no two slices at the same position, slice positions along the normal evenly spaced (within
``SPACING_TOLERANCE`` of the median gap: a missing slice leaves a double gap) and not drifting
in-plane, and no DICOM file in a series folder that GDCM could not read (a truncated slice is
dropped from the series without a word). A high-b series whose headers carry b-values must have
one, >= ``checks.HIGH_B_MIN``. Whatever ITK prints while reading is an error too. A missing first
or last slice cannot be told from a shorter acquisition.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.checks import b_values, check_b_values
from fedprostate.data.formats.integrity import native_messages, read_failure_reason
from fedprostate.data.study import StudyError

MIN_SLICES = 3
SPACING_TOLERANCE = 0.01  # relative to the median gap between slice positions
DUPLICATE_MM = 1e-3  # slices closer than this along the normal share a position
DRIFT_MM = 0.05  # in-plane movement of slice positions allowed across the series
REQUIRED_TAGS = {
    "0028|0030": "PixelSpacing",
    "0020|0032": "ImagePositionPatient",
    "0020|0037": "ImageOrientationPatient",
}

SERIES = {  # sequence -> (series number, SeriesDescription as in ProstateX)
    "t2w": (4, "t2_tse_tra"),
    "adc": (7, "ep2d_diff_tra_ADC"),
    "hbv": (8, "ep2d_diff_tra_CALC_BVAL"),
}


def sequence_of(description: str) -> str | None:
    d = description.lower()
    if "adc" in d:
        return "adc"
    if "bval" in d:
        return "hbv"
    if "t2" in d and "tra" in d:
        return "t2w"
    return None


def _unread_dicom_files(folder: Path, listed: set[str]) -> list[Path]:
    """Files in ``folder`` with a DICOM preamble that no series took (GDCM could not read them)."""
    out = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and str(f) not in listed:
            with f.open("rb") as fh:
                if fh.read(132)[128:132] == b"DICM":
                    out.append(f)
    return out


def find_series(study_dir: Path, pid: str) -> tuple[dict[str, list[str]], str]:
    """Sequence name -> sorted DICOM file list, and the institution name of the T2 series.

    What GDCM prints while scanning (e.g. "No Series were found" for a folder of other files) is
    discovery noise and dropped; unreadable slices are caught by :func:`_unread_dicom_files`."""
    with native_messages():
        return _find_series(study_dir, pid)


def _find_series(study_dir: Path, pid: str) -> tuple[dict[str, list[str]], str]:
    series: dict[str, list[str]] = {}
    institution = ""
    folders = [study_dir, *sorted(p for p in study_dir.rglob("*") if p.is_dir())]
    for folder in folders:
        if not any(f.is_file() for f in folder.iterdir()):
            continue
        try:
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        except RuntimeError:
            continue
        listed: set[str] = set()
        used = False
        for sid in ids:
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))
            listed.update(files)
            if not files:
                continue
            info = sitk.ImageFileReader()
            info.SetFileName(files[0])
            try:
                info.ReadImageInformation()
            except RuntimeError as exc:
                raise StudyError(pid, "corrupt DICOM header", files[0]) from exc
            get = info.GetMetaData if info.HasMetaDataKey("0008|103e") else (lambda _k: "")
            seq = sequence_of(get("0008|103e"))
            if seq and seq not in series:
                series[seq] = files
                used = True
                if seq == "t2w" and info.HasMetaDataKey("0008|0080"):
                    institution = info.GetMetaData("0008|0080").strip()
        if used and (unread := _unread_dicom_files(folder, listed)):
            raise StudyError(
                pid,
                f"{len(unread)} DICOM file(s) in a series folder cannot be read "
                f"(truncated or corrupt slice?), e.g. {unread[0].name}",
                unread[0],
            )
    return series, institution


def _numbers(text: str, n: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in str(text).split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return values if values.size == n and np.isfinite(values).all() else None


def check_slices(reader: sitk.ImageSeriesReader, files: list[str], pid: str, seq: str) -> None:
    """Raise StudyError unless the slices read by ``reader`` form one evenly spaced volume."""
    folder = Path(files[0]).parent
    n = len(files)
    if n < MIN_SLICES:
        raise StudyError(pid, f"{seq} series has {n} slice(s), needs >= {MIN_SLICES}", folder)
    positions, orientations = [], []
    for k in range(n):
        tags = {}
        for key, name in REQUIRED_TAGS.items():
            text = reader.GetMetaData(k, key) if reader.HasMetaDataKey(k, key) else ""
            tags[key] = _numbers(text, {"0028|0030": 2, "0020|0032": 3, "0020|0037": 6}[key])
            if tags[key] is None:
                raise StudyError(pid, f"{seq} DICOM slice lacks a valid {name} ({key})", files[k])
        positions.append(tags["0020|0032"])
        orientations.append(tags["0020|0037"])
    orientations = np.asarray(orientations)
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise StudyError(pid, f"{seq} slices disagree on ImageOrientationPatient", folder)
    row, col = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, col)
    positions = np.asarray(positions)
    along = positions @ normal
    order = np.argsort(along)
    gaps = np.diff(along[order])
    for k in np.flatnonzero(gaps < DUPLICATE_MM):
        a, b = (Path(files[i]).name for i in order[k : k + 2])
        raise StudyError(
            pid, f"{seq} slices {a} and {b} share the position {along[order][k]:.2f} mm", folder
        )
    median = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - median)))
    if abs(gaps[worst] - median) > SPACING_TOLERANCE * median:
        a, b = (Path(files[i]).name for i in order[worst : worst + 2])
        raise StudyError(
            pid,
            f"{seq} slice spacing is not uniform: {gaps[worst]:.3f} mm between {a} and {b}, "
            f"median {median:.3f} mm (missing slice?)",
            folder,
        )
    drift = np.ptp(positions @ np.stack([row, col], axis=1), axis=0).max()
    if drift > DRIFT_MM:
        raise StudyError(
            pid, f"{seq} slice positions drift {drift:.2f} mm in-plane (tilted stack)", folder
        )


def _slice_tags(reader: sitk.ImageSeriesReader, k: int):
    return lambda key: reader.GetMetaData(k, key) if reader.HasMetaDataKey(k, key) else None


def _slice_tags(reader: sitk.ImageSeriesReader, k: int):
    return lambda key: reader.GetMetaData(k, key) if reader.HasMetaDataKey(k, key) else None


def read_series(files: list[str], pid: str, seq: str) -> sitk.Image:
    folder = Path(files[0]).parent
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.SetLoadPrivateTags(seq == "hbv")  # vendor b-value tags
    reader.SetSpacingWarningRelThreshold(SPACING_TOLERANCE)
    failure = None
    with native_messages() as messages:
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            failure = exc
    if failure is not None:
        reason = read_failure_reason(files[0], failure, messages)
        raise StudyError(pid, f"corrupt or truncated {seq} DICOM series ({reason})", folder)
    if image.GetDimension() != 3:
        raise StudyError(pid, f"{seq} series is not a 3D volume", folder)
    if seq == "hbv":
        values = [v for k in range(len(files)) for v in b_values(_slice_tags(reader, k))]
        check_b_values(values, pid, str(folder))
    check_slices(reader, files, pid, seq)
    if messages:
        raise StudyError(pid, f"{seq} DICOM series: the reader reported '{messages[0]}'", folder)
    return image
