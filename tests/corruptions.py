"""Small, exact ways to damage a study on disk: the building blocks of the bad-input corpus.

Images are edited through SimpleITK (read, change geometry or voxels, write back in the same
file format); files are truncated by bytes; CSV rows are edited as text or bytes; DICOM slices
(Implicit VR Little Endian, what SimpleITK writes) are edited element by element, walking the data
set from the end of the file meta group, so a tag is never matched inside another's value.
"""

from __future__ import annotations

import csv
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

# ------------------------------------------------------------------ images and files


def edit_image(path: Path, fn: Callable[[sitk.Image], sitk.Image | None]) -> None:
    """Apply ``fn`` to the image (in place or returning a new one) and write it back."""
    image = sitk.ReadImage(str(path))
    out = fn(image)
    sitk.WriteImage(out if out is not None else image, str(path))


def shift_origin(path: Path, mm: tuple[float, float, float]) -> None:
    edit_image(path, lambda im: im.SetOrigin(tuple(np.add(im.GetOrigin(), mm))))


def set_voxels(path: Path, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replace the voxel array by ``fn(array)`` (same geometry, dtype of the result)."""

    def change(image: sitk.Image) -> sitk.Image:
        out = sitk.GetImageFromArray(fn(sitk.GetArrayFromImage(image)))
        out.CopyInformation(image)
        return out

    edit_image(path, change)


def truncate(path: Path, keep: float = 0.5) -> None:
    """Keep the first ``keep`` share of the file's bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def resample_onto(path: Path, reference: sitk.Image) -> None:
    """Rewrite a mask on ``reference``'s grid (nearest neighbour): drawn on another series."""
    edit_image(
        path,
        lambda im: sitk.Resample(
            im, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, im.GetPixelID()
        ),
    )


# ------------------------------------------------------------------ CSV tables


def edit_lines(path: Path, fn: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(fn(lines)) + "\n", encoding="utf-8")


def replace_in_row(path: Path, row_start: str, old: str, new: str) -> None:
    """In the line starting with ``row_start``, replace the first ``old`` by ``new``."""

    def change(lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            if line.startswith(row_start):
                assert old in line, (old, line)
                line = line.replace(old, new, 1)
            out.append(line)
        return out

    edit_lines(path, change)


def put_byte(path: Path, row_start: str, old: str, byte: bytes = b"\xe9") -> None:
    """In the first row starting with ``row_start`` that contains ``old``, replace ``old`` by a
    raw (non-UTF-8) byte."""
    lines = path.read_bytes().split(b"\n")
    for n, line in enumerate(lines):
        if line.startswith(row_start.encode()) and old.encode() in line:
            lines[n] = line.replace(old.encode(), byte, 1)
            path.write_bytes(b"\n".join(lines))
            return
    raise ValueError(f"no row starting with {row_start!r} contains {old!r}")


# ------------------------------------------------------------------ DICOM slices


def _elements(data: bytes):
    """(start, end, group, element) of each top-level data element after the meta group."""
    assert data[128:132] == b"DICM", "not a DICOM Part 10 file"
    (meta_length,) = struct.unpack("<I", data[140:144])
    at = 144 + meta_length
    while at + 8 <= len(data):
        group, element, length = struct.unpack("<HHI", data[at : at + 8])
        if length == 0xFFFFFFFF:
            return  # undefined length (a sequence): nothing we edit lies beyond
        yield at, at + 8 + length, group, element
        at += 8 + length


def drop_tag(path: Path, group: int, element: int) -> None:
    data = path.read_bytes()
    for start, end, g, e in _elements(data):
        if (g, e) == (group, element):
            path.write_bytes(data[:start] + data[end:])
            return
    raise KeyError(f"({group:04x},{element:04x}) not in {path}")


def set_tag(path: Path, group: int, element: int, value: bytes) -> None:
    """Set (or insert, in tag order) an element's raw value; odd lengths get a space pad."""
    if len(value) % 2:
        value += b" "
    data = path.read_bytes()
    new = struct.pack("<HHI", group, element, len(value)) + value
    for start, end, g, e in _elements(data):
        if (g, e) == (group, element):
            path.write_bytes(data[:start] + new + data[end:])
            return
        if (g, e) > (group, element):
            path.write_bytes(data[:start] + new + data[start:])
            return
    path.write_bytes(data + new)


def get_tag(path: Path, key: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData(key)


def set_b_value(path: Path, b: float) -> None:
    """DiffusionBValue (0018,9087), VR FD: one little-endian float64."""
    set_tag(path, 0x0018, 0x9087, struct.pack("<d", float(b)))


def series_files(study_root: Path, patient: str, description: str) -> list[Path]:
    """Slices of one patient's series (ProstateX layout), in file-name order."""
    (folder,) = [p for p in (study_root / patient).glob(f"*/*-{description}") if p.is_dir()]
    return sorted(folder.glob("*.dcm"))


def edit_csv(path: Path, fn: Callable[[dict], dict | None]) -> None:
    """Rewrite a CSV row by row: ``fn(row)`` returns the row to write (changed or not) or None
    to drop it. Column order is kept."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns, rows = reader.fieldnames, list(reader)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            if (out := fn(dict(row))) is not None:
                writer.writerow(out)
