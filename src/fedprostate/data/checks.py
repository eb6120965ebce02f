"""Checks that keep a wrong study out of the cache: geometry, coverage, content and identity.

Every check raises :class:`StudyError` (or returns the problem as text) with a reason that names
the real cause. The tolerances are constants here and stated in the README ("Bad input: nothing
silently wrong"):

* **Mask grids** (:func:`mask_on_t2`): a lesion / gland / anatomy mask must lie on the T2 grid, or
  on the ADC grid when it was drawn on the diffusion series: same size, direction cosines within
  ``DIRECTION_TOLERANCE`` and its first and last voxel centres within ``GRID_TOLERANCE_VOX`` T2
  voxels of the reference's. Anything else is rejected with both geometries in the reason unless
  resampling is asked for (``--resample-masks``), and then only if most of the mask stays inside.
* **Fields of view** (:func:`check_coverage`): ADC and high-b DWI must cover at least
  ``MIN_GLAND_COVERAGE`` of the gland (of the central third of the T2 volume without a gland).
* **Crops** (:func:`crop_problem`): more than ``MAX_OUT_OF_VIEW`` of a crop's pixels outside a
  sequence's field of view, or a constant channel, rejects the study instead of zero-filling.
* **Content** (:func:`check_contrast`, :func:`check_adc_range`, :func:`check_b_values`): blank or
  near-constant sequences, a gland median ADC outside ``ADC_RANGE`` (1e-6 mm²/s, after unit
  detection), a high-b DWI whose header gives b < ``HIGH_B_MIN`` or mixes b-values.
* **Identifiers** (:func:`id_problem`): patient, study and site ids match ``ID_PATTERN``.
"""

from __future__ import annotations

import re

import numpy as np
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.study import StudyError

GRID_TOLERANCE_VOX = 0.1  # mask corner voxel centres vs the T2's, in T2 voxels
DIRECTION_TOLERANCE = 1e-3  # max difference of direction cosines
MIN_GLAND_COVERAGE = 0.5  # share of the gland each sequence's field of view must contain
MAX_OUT_OF_VIEW = 0.5  # share of a crop's pixels allowed outside a sequence's field of view
MIN_CONTRAST = 0.01  # (p99 - p1) / max(|p1|, |p99|) below this: near-constant
ADC_RANGE = (400.0, 3200.0)  # plausible gland median ADC, 1e-6 mm²/s (free water, 37 °C: 3000)
HIGH_B_MIN = 800.0  # s/mm²: the lowest b-value accepted as a "high-b" DWI
MAX_COVERAGE_POINTS = 4096
ID_PATTERN = re.compile(r"\w(?:[\w. -]{0,62}[\w.-])?")
ID_RULE = (
    "1-64 letters, digits, '_', '.', '-' or inner spaces, starting with a letter, digit or '_' "
    "(no path separators, no leading = + - @)"
)
B_VALUE_KEYS = ("0018|9087", "0019|100c", "0043|1039", "2001|1003", "DiffusionBValue")


# ---------------------------------------------------------------- identifiers


def id_problem(kind: str, value: str | None) -> str | None:
    """Why ``value`` cannot be a ``kind`` id (patient_id, study_id, site), or None."""
    text = "" if value is None else str(value)
    if ID_PATTERN.fullmatch(text):
        return None
    shown = text if len(text) <= 40 else text[:40] + "…"
    return f"{kind} {shown!r} is not a valid identifier: {ID_RULE}"


def ids_problem(patient_id: str, study_id: str, site: str) -> str | None:
    """The first invalid identifier of a study, or None."""
    for kind, value in (("patient_id", patient_id), ("study_id", study_id), ("site", site)):
        if problem := id_problem(kind, value):
            return problem
    return None


def check_ids(patient_id: str, study_id: str, site: str, where: str = "") -> None:
    if problem := ids_problem(patient_id, study_id, site):
        raise StudyError(patient_id or "?", problem, where)


def slug(text: str, default: str) -> str:
    """A free-text label (a DICOM InstitutionName) made into a valid identifier."""
    out = re.sub(r"[^\w. -]+", "_", str(text)).strip(" .-")[:64].strip()
    return out if ID_PATTERN.fullmatch(out) else default


# ---------------------------------------------------------------- geometry


def describe_grid(image: sitk.Image) -> str:
    size = "×".join(str(s) for s in image.GetSize())
    spacing = "×".join(f"{s:.3g}" for s in image.GetSpacing())
    origin = ", ".join(f"{v:.1f}" for v in image.GetOrigin())
    return f"size {size}, spacing {spacing} mm, origin ({origin})"


def grid_offset(image: sitk.Image, reference: sitk.Image) -> float:
    """Largest distance, in reference voxels, between corresponding corner voxel centres of the
    two grids; ``inf`` when sizes or directions differ."""
    if image.GetSize() != reference.GetSize():
        return float("inf")
    if np.abs(np.subtract(image.GetDirection(), reference.GetDirection())).max() > (
        DIRECTION_TOLERANCE
    ):
        return float("inf")
    last = [s - 1 for s in image.GetSize()]
    worst = 0.0
    for corner in ((0, 0, 0), last):
        world = image.TransformIndexToPhysicalPoint(corner)
        idx = reference.TransformPhysicalPointToContinuousIndex(world)
        worst = max(worst, float(np.abs(np.subtract(idx, corner)).max()))
    return worst


def _world_shift(image: sitk.Image, reference: sitk.Image) -> float:
    return float(np.linalg.norm(np.subtract(image.GetOrigin(), reference.GetOrigin())))


def mask_on_t2(
    mask: sitk.Image,
    t2: sitk.Image,
    patient_id: str,
    path: str,
    what: str,
    also: dict[str, sitk.Image] | None = None,
    resample: bool = False,
) -> sitk.Image:
    """``mask`` (any integer type) on the T2 grid, or a StudyError when its grid is wrong.

    On the T2 grid (within tolerance) the T2 geometry is copied, no interpolation. On one of the
    ``also`` grids (the ADC grid, for masks drawn on diffusion) it is resampled (nearest
    neighbour). Otherwise it is rejected, unless ``resample``; a resampled mask that loses more
    than half of its foreground lay outside the T2 and is rejected too.
    """
    if grid_offset(mask, t2) <= GRID_TOLERANCE_VOX:
        out = sitk.Image(mask)
        out.CopyInformation(t2)
        return out
    on_other = any(grid_offset(mask, g) <= GRID_TOLERANCE_VOX for g in (also or {}).values())
    if not (on_other or resample):
        raise StudyError(
            patient_id,
            f"{what} grid does not match the T2 grid (mask: {describe_grid(mask)}; "
            f"T2: {describe_grid(t2)}; origins {_world_shift(mask, t2):.1f} mm apart; "
            f"tolerance {GRID_TOLERANCE_VOX} voxel): --resample-masks would resample it",
            path,
        )
    out = sitk.Resample(mask, t2, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    before = float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * np.prod(mask.GetSpacing())
    after = float(np.count_nonzero(sitk.GetArrayViewFromImage(out))) * np.prod(t2.GetSpacing())
    if before > 0 and after < 0.5 * before:
        raise StudyError(
            patient_id,
            f"{what} lies mostly outside the T2 field of view ({after:.0f} of {before:.0f} mm³ "
            f"inside; mask: {describe_grid(mask)}; T2: {describe_grid(t2)})",
            path,
        )
    return out


def region_points(t2: sitk.Image, gland: sitk.Image | None) -> np.ndarray:
    """World points [N, 3] (at most ~``MAX_COVERAGE_POINTS``) of the gland voxels, or of the
    central third of the T2 volume without a gland."""
    shape = t2.GetSize()[::-1]
    arr = sitk.GetArrayViewFromImage(gland) if gland is not None else None
    step = max(1, int(np.sqrt(np.prod(shape) / (16 * MAX_COVERAGE_POINTS))))  # in-plane stride
    flat = np.flatnonzero(arr[:, ::step, ::step]) if arr is not None else None
    if flat is not None and flat.size:
        zyx = np.stack(np.unravel_index(flat, arr[:, ::step, ::step].shape), 1)
        zyx = zyx[:: flat.size // MAX_COVERAGE_POINTS + 1] * [1, step, step]
    else:
        axes = [
            np.linspace(s // 3, s - 1 - s // 3, min(16, max(s - 2 * (s // 3), 1))) for s in shape
        ]
        zyx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    index = zyx[:, ::-1].astype(np.float64)
    matrix = np.asarray(t2.GetDirection()).reshape(3, 3) * np.asarray(t2.GetSpacing())
    return np.asarray(t2.GetOrigin()) + index @ matrix.T


def coverage(points: np.ndarray, image: sitk.Image) -> float:
    """Share of world ``points`` inside ``image``'s field of view (half a voxel margin)."""
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    index = (points - np.asarray(image.GetOrigin())) @ np.linalg.inv(matrix).T
    size = np.asarray(image.GetSize())
    inside = np.all((index >= -0.5) & (index <= size - 0.5), axis=1)
    return float(inside.mean()) if len(points) else 0.0


def check_coverage(
    images: dict[str, sitk.Image], gland: sitk.Image | None, patient_id: str, paths: dict
) -> None:
    """ADC and high-b DWI must see the gland (the central T2 region without a gland mask)."""
    points = region_points(images["t2w"], gland)
    region = "gland" if gland is not None else "central third of the T2 volume"
    for seq in ("adc", "hbv"):
        share = coverage(points, images[seq])
        if share < MIN_GLAND_COVERAGE:
            raise StudyError(
                patient_id,
                f"{seq} field of view covers {share:.0%} of the {region} "
                f"(needs {MIN_GLAND_COVERAGE:.0%}; {seq}: {describe_grid(images[seq])}; "
                f"T2: {describe_grid(images['t2w'])})",
                paths.get(seq, ""),
            )


# ---------------------------------------------------------------- content


def check_contrast(seq: str, lo: float, hi: float, patient_id: str, path: str = "") -> None:
    """Reject a blank or near-constant image from its 1st and 99th percentiles."""
    scale = max(abs(lo), abs(hi))
    if hi - lo <= MIN_CONTRAST * scale or scale == 0:
        kind = "blank" if scale == 0 else "near-constant"
        raise StudyError(
            patient_id,
            f"{seq} image is {kind} (1st-99th percentile {lo:.4g} to {hi:.4g})",
            path,
        )


def check_adc_range(median: float, factor: float, patient_id: str, path: str = "") -> None:
    """The gland median ADC in 1e-6 mm²/s (``median`` stored × ``factor``) must be plausible."""
    value = median * factor
    lo, hi = ADC_RANGE
    if not lo <= value <= hi:
        raise StudyError(
            patient_id,
            f"ADC outside the physical range: gland median {value:.0f} ×1e-6 mm²/s after unit "
            f"detection (stored {median:.4g} × {factor:g}; plausible {lo:.0f}-{hi:.0f})",
            path,
        )


def b_values(get) -> list[float]:
    """b-values a header gives, read with ``get(key) -> str | None`` (DICOM or MHA keys)."""
    for key in B_VALUE_KEYS:
        text = get(key)
        if text is None or not str(text).strip():
            continue
        try:
            value = float(str(text).replace("\\", " ").split()[0])
        except ValueError:
            continue
        return [value % 1e9 if value >= 1e9 else value]  # GE stores 1e9 + b
    return []


def check_b_values(values: list[float], patient_id: str, path: str = "") -> None:
    """A high-b DWI whose header gives b-values: one value, at least ``HIGH_B_MIN``."""
    distinct = sorted({round(v) for v in values})
    if len(distinct) > 1:
        raise StudyError(patient_id, f"hbv series mixes b-values {distinct} s/mm²", path)
    if distinct and distinct[0] < HIGH_B_MIN:
        raise StudyError(
            patient_id,
            f"hbv header gives b={distinct[0]} s/mm², not a high-b DWI (needs >= {HIGH_B_MIN:g})",
            path,
        )


def crop_problem(raw: np.ndarray, seq: str) -> str | None:
    """Why the raw (NaN outside the field of view) planes of one sequence make a bad crop."""
    missing = float(np.isnan(raw).mean())
    if missing > MAX_OUT_OF_VIEW:
        return (
            f"{missing:.0%} of the {seq} crop lies outside the {seq} field of view "
            f"(max {MAX_OUT_OF_VIEW:.0%})"
        )
    seen = raw[np.isfinite(raw)]
    if seen.size and seen.max() == seen.min():
        return f"the {seq} crop is constant ({float(seen[0]):.4g})"
    return None
