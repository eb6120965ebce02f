"""DICOM series: grouping files into series, recognising the sequence, reading a 3D volume.

Series are grouped with GDCM series IDs (``sitk.ImageSeriesReader``) and recognised by
SeriesDescription (0008,103E) as ProstateX names them: ``t2`` + ``tra`` → T2, ``adc`` → ADC,
``bval`` (e.g. ``ep2d_diff_tra_CALC_BVAL``) → high-b DWI. ``SERIES`` holds the descriptions
``data synth`` writes, which these rules recognise.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk  # noqa: N813

from fedprostate.data.study import StudyError

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


def find_series(study_dir: Path, pid: str) -> tuple[dict[str, list[str]], str]:
    """Sequence name -> sorted DICOM file list, and the institution name of the T2 series."""
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
        for sid in ids:
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))
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
                if seq == "t2w" and info.HasMetaDataKey("0008|0080"):
                    institution = info.GetMetaData("0008|0080").strip()
    return series, institution


def read_series(files: list[str], pid: str, seq: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise StudyError(
            pid, f"corrupt or truncated {seq} DICOM series", Path(files[0]).parent
        ) from exc
    if image.GetDimension() != 3:
        raise StudyError(pid, f"{seq} series is not a 3D volume", Path(files[0]).parent)
    return image
