"""What every format reader shares: where a study lives (:class:`StudyRef`) and the checks and
helpers that make every format behave alike (safe image reading, label checks, connected-component
findings, sampled negatives, the final study validation).

A format module (``picai``, ``prostatex``, ``prostate158``, ``generic``) exposes ``NAME``,
``detect(src) -> bool``, ``list_refs(src, **opts) -> (refs, errors)`` and
``load(ref, seed, **opts) -> Study``. Listing is cheap (paths and table rows only); loading reads
images and may raise :class:`StudyError`. Format modules import this module, never the registry
(``registry.py``) that chooses between them.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import itertools
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813
from scipy import ndimage

from fedprostate.data.checks import b_values, check_b_values, check_coverage, check_ids
from fedprostate.data.formats.integrity import native_messages, nifti_problem, read_failure_reason
from fedprostate.data.study import SEQUENCES, Finding, Study, StudyError

NEGATIVE_MARGIN_MM = 10.0  # sampled negatives stay at least this far from any lesion voxel


class DataFormatError(ValueError):
    """The source as a whole cannot be read (e.g. a table lacks required columns)."""


@dataclass
class StudyRef:
    """Where one study lives on disk, before any image is read."""

    fmt: str
    site: str
    patient_id: str
    study_id: str
    paths: dict[str, str] = field(default_factory=dict)  # sequence / mask name -> file or folder
    row: dict[str, str] = field(default_factory=dict)  # marksheet row, when there is one
    findings: list[dict[str, str]] = field(
        default_factory=list
    )  # table findings (ProstateX, generic, a PI-CAI radiology table)
    # where lesion-mode findings come from: "reader" (a findings table), "proposal" (the
    # label-free candidate rule), "none" (organ mode needs none)
    finding_source: str = "reader"

    @property
    def key(self) -> str:
        return f"{self.patient_id}_{self.study_id}"

    @property
    def main_path(self) -> str:
        return self.paths.get("t2w") or next(iter(self.paths.values()), "")


# ---------------------------------------------------------------- shared helpers for readers


def study_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on the run seed and the study, not on listing order."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])


def _first_bad_byte(lines: list[str], offsets: list[int], first: int, last: int):
    """(byte offset, byte, line number) of the first undecodable byte in lines first..last."""
    for n in range(first, last + 1):
        line = lines[n - 1]
        for j, char in enumerate(line):
            if "\udc80" <= char <= "\udcff":
                before = len(line[:j].encode("utf-8", "surrogateescape"))
                return offsets[n - 1] + before, ord(char) - 0xDC00, n
    return None


def read_csv_checked(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Read a CSV; missing required columns is a whole-file error naming the file.

    A bad row spoils only itself: every row gets ``_line`` (its first line in the file),
    ``_error`` (why it cannot be used: a non-UTF-8 byte, named by its byte offset, line and row,
    or the wrong number of fields; empty when fine) and ``_ragged`` (truthy whenever ``_error``
    is set, for readers that only check that). Cells are stripped; missing cells are empty.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read CSV ({exc})") from exc
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    lines = io.StringIO(raw[bom:].decode("utf-8", "surrogateescape"), newline="").readlines()
    offsets = list(
        itertools.accumulate(
            (len(ln.encode("utf-8", "surrogateescape")) for ln in lines), initial=bom
        )
    )
    reader = csv.reader(iter(lines))
    try:
        header = next(reader, [])
        if bad := _first_bad_byte(lines, offsets, 1, reader.line_num):
            raise DataFormatError(
                f"{path}: header row has a non-UTF-8 byte 0x{bad[1]:02x} at byte offset {bad[0]}"
            )
        columns = [c.strip() for c in header]
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataFormatError(f"{path}: wrong CSV columns, missing {missing} (found {columns})")
        rows, previous = [], reader.line_num
        for number, record in enumerate(reader, start=1):
            first, previous = previous + 1, reader.line_num
            if not record:
                continue
            row = {c: (v or "").strip() for c, v in zip(columns, record, strict=False)}
            row.update({c: "" for c in columns[len(record) :]})
            error = ""
            if bad := _first_bad_byte(lines, offsets, first, reader.line_num):
                error = (
                    f"non-UTF-8 byte 0x{bad[1]:02x} at byte offset {bad[0]} "
                    f"(line {bad[2]}, data row {number})"
                )
            elif len(record) != len(columns):
                error = f"wrong number of fields ({len(record)}; the header has {len(columns)})"
            row.update(_line=str(first), _error=error, _ragged="1" if error else "")
            rows.append(row)
        return rows
    except csv.Error as exc:
        raise DataFormatError(f"{path}: cannot read CSV, line {reader.line_num} ({exc})") from exc


def read_image(path: str | Path, patient_id: str, what: str) -> sitk.Image:
    """Read an image file, turning every IO failure into a StudyError naming file and patient.

    A truncated NIfTI is caught before ITK zero-fills it; anything ITK or its libraries print
    while reading is an error; the reason for an unreadable file names the real cause. A high-b
    DWI whose header carries b-values is checked (:func:`checks.check_b_values`).
    """
    path = Path(path)
    if not path.exists():
        raise StudyError(patient_id, f"missing {what} image", path)
    if problem := nifti_problem(path):
        raise StudyError(patient_id, f"corrupt or truncated {what} image ({problem})", path)
    failure = None
    with native_messages() as messages:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            failure = exc
    if failure is not None:
        reason = read_failure_reason(path, failure, messages)
        raise StudyError(patient_id, f"corrupt or truncated {what} image ({reason})", path)
    if messages:
        raise StudyError(patient_id, f"{what} image: the reader reported '{messages[0]}'", path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise StudyError(patient_id, f"{what} image is not a 3D scalar volume", path)
    if what == "hbv":
        get = lambda key: image.GetMetaData(key) if image.HasMetaDataKey(key) else None  # noqa: E731
        check_b_values(b_values(get), patient_id, str(path))
    return image


def check_finite(image: sitk.Image, patient_id: str, what: str, path: str = "") -> None:
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise StudyError(patient_id, f"{what} has {bad} NaN/Inf voxels", path)


def on_grid(image: sitk.Image, reference: sitk.Image, nearest: bool = True) -> sitk.Image:
    """``image`` on ``reference``'s grid (returned unchanged when the grids already match)."""
    same = (
        image.GetSize() == reference.GetSize()
        and np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
        and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
        and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-4)
    )
    if same:
        out = sitk.Image(image)
        out.CopyInformation(reference)
        return out
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(image, reference, sitk.Transform(), interp, 0, image.GetPixelID())


def check_label_values(mask: sitk.Image, patient_id: str, path: str, allowed=range(0, 6)) -> None:
    arr = sitk.GetArrayViewFromImage(mask)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise StudyError(patient_id, "label mask has non-integer values", path)
    values = np.unique(arr)
    bad = [v for v in values.tolist() if int(v) not in allowed]
    if bad:
        raise StudyError(patient_id, f"label values {bad[:5]} outside 0-5", path)


LABEL_RADIUS_MM = 3.0  # a finding is csPCa when the csPCa mask reaches within this distance


def label_from_mask(finding: Finding, lesion_mask: sitk.Image) -> Finding:
    """A finding labelled by the ground-truth csPCa mask (it *labels*, it never *places*).

    csPCa when any voxel of the mask lies within ``LABEL_RADIUS_MM`` of the finding; ISUP = the
    largest mask value there (AI masks use 1: kept as ``isup=1`` but counted as csPCa).
    """
    arr = sitk.GetArrayViewFromImage(lesion_mask)
    idx = np.asarray(lesion_mask.TransformPhysicalPointToContinuousIndex(finding.world_mm))
    spacing = np.asarray(lesion_mask.GetSpacing())
    reach = np.ceil(LABEL_RADIUS_MM / spacing).astype(int)
    lo = np.maximum(np.floor(idx).astype(int) - reach, 0)
    hi = np.minimum(np.ceil(idx).astype(int) + reach + 1, np.asarray(lesion_mask.GetSize()))
    if np.any(hi <= lo):
        return dataclasses.replace(finding, isup=0, clinsig=False)
    block = arr[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
    zz, yy, xx = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo[::-1], hi[::-1], strict=True)),
                             indexing="ij")  # fmt: skip
    dist = np.sqrt(((xx - idx[0]) * spacing[0]) ** 2 + ((yy - idx[1]) * spacing[1]) ** 2
                   + ((zz - idx[2]) * spacing[2]) ** 2)  # fmt: skip
    values = block[dist <= LABEL_RADIUS_MM]
    isup = int(values.max()) if values.size else 0
    return dataclasses.replace(finding, isup=isup, clinsig=isup > 0)


def sample_negatives(
    reference: sitk.Image,
    gland: sitk.Image | None,
    lesion: sitk.Image | None,
    n: int,
    rng: np.random.Generator,
    margin_mm: float = NEGATIVE_MARGIN_MM,
) -> list[Finding]:
    """``n`` negative locations inside the gland, ``margin_mm`` away from every lesion voxel.

    Without a gland mask the central third of the T2 field of view stands in for the gland.
    Returns fewer (possibly zero) findings when no voxel qualifies.
    """
    if n <= 0:
        return []
    size = reference.GetSize()
    if gland is not None:
        allowed = sitk.GetArrayFromImage(gland) > 0
    else:
        allowed = np.zeros(size[::-1], dtype=bool)
        z, y, x = (s // 3 for s in size[::-1])
        allowed[z : size[2] - z, y : size[1] - y, x : size[0] - x] = True
    if lesion is not None:
        les = sitk.GetArrayViewFromImage(lesion) > 0
        if les.any():
            dist = ndimage.distance_transform_edt(~les, sampling=reference.GetSpacing()[::-1])
            allowed &= dist >= margin_mm
    candidates = np.flatnonzero(allowed)
    if candidates.size == 0:
        return []
    chosen = rng.choice(candidates, size=min(n, candidates.size), replace=False)
    out = []
    for k, flat in enumerate(sorted(chosen.tolist()), start=1):
        z, y, x = np.unravel_index(flat, allowed.shape)
        world = reference.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
        out.append(Finding(f"N{k}", tuple(float(v) for v in world), isup=0, source="sampled"))
    return out


def inside(image: sitk.Image, world_mm, tolerance_vox: float = 0.5) -> bool:
    idx = np.asarray(image.TransformPhysicalPointToContinuousIndex(tuple(map(float, world_mm))))
    size = np.asarray(image.GetSize())
    return bool(np.all(idx >= -tolerance_vox) and np.all(idx <= size - 1 + tolerance_vox))


def validate_study(study: Study) -> None:
    """Checks every reader's output must pass: valid ids, sequences present and finite, ADC and
    DWI fields of view covering the gland, findings inside the T2 volume."""
    check_ids(study.patient_id, study.study_id, study.site, study.source_paths.get("t2w", ""))
    for seq in SEQUENCES:
        if seq not in study.images:
            raise StudyError(
                study.patient_id, f"missing sequence {seq}", study.source_paths.get("t2w")
            )
        check_finite(study.images[seq], study.patient_id, seq, study.source_paths.get(seq, ""))
    check_coverage(study.images, study.gland_mask, study.patient_id, study.source_paths)
    t2 = study.images["t2w"]
    for f in study.findings:
        if not inside(t2, f.world_mm):
            where = ", ".join(f"{v:.1f}" for v in f.world_mm)
            raise StudyError(
                study.patient_id,
                f"finding {f.finding_id} at ({where}) mm lies outside the T2 volume",
                study.source_paths.get("findings", study.source_paths.get("t2w", "")),
            )
