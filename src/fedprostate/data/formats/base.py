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

import csv
import dataclasses
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813
from scipy import ndimage

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


def read_csv_checked(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Read a CSV; missing required columns is a whole-file error naming the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataFormatError(
                    f"{path}: wrong CSV columns, missing {missing} (found {columns})"
                )
            rows = []
            for line, raw in enumerate(reader, start=2):
                row = {
                    (k or "").strip(): (v or "").strip() if isinstance(v, str) else v
                    for k, v in raw.items()
                }
                # DictReader puts surplus fields under None and fills short rows with None
                row["_line"] = str(line)
                row["_ragged"] = "1" if (None in raw or None in raw.values()) else ""
                rows.append(row)
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(f"{path}: cannot read CSV ({exc})") from exc


def read_image(path: str | Path, patient_id: str, what: str) -> sitk.Image:
    """Read an image file, turning every IO failure into a StudyError naming file and patient."""
    path = Path(path)
    if not path.exists():
        raise StudyError(patient_id, f"missing {what} image", path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:120] if str(exc).strip() else "unreadable"
        raise StudyError(patient_id, f"corrupt or truncated {what} image ({first})", path) from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise StudyError(patient_id, f"{what} image is not a 3D scalar volume", path)
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
    """Checks every reader's output must pass: sequences present, finite, findings inside."""
    for seq in SEQUENCES:
        if seq not in study.images:
            raise StudyError(
                study.patient_id, f"missing sequence {seq}", study.source_paths.get("t2w")
            )
        check_finite(study.images[seq], study.patient_id, seq, study.source_paths.get(seq, ""))
    t2 = study.images["t2w"]
    for f in study.findings:
        if not inside(t2, f.world_mm):
            where = ", ".join(f"{v:.1f}" for v in f.world_mm)
            raise StudyError(
                study.patient_id,
                f"finding {f.finding_id} at ({where}) mm lies outside the T2 volume",
                study.source_paths.get("findings", study.source_paths.get("t2w", "")),
            )
