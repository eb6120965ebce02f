"""Geometry-exact alignment and robust per-sequence normalization.

Alignment: the working frame is the T2 grid's orientation at a common in-plane spacing (the T2
slice spacing is kept). ADC and DWI are resampled in world space (origin, direction and spacing
of every grid honoured) straight from their own grids onto that frame: one linear interpolation,
no intermediate T2-grid copy, so no double blurring. ``aligned_volumes`` does this for whole
volumes; ``crops`` does the same for small planes only (much faster, identical geometry).

Normalization (per study, fitted once, applied to every sample):

* T2 and DWI: percentiles 1 and 99 of the volume map to 0 and 1 (values are clipped to [-1, 4]).
* ADC: converted to physical units of 1e-6 mm²/s, then divided by ``ADC_SCALE`` (3000), so the
  same tissue gives the same number whatever the scanner stored. The unit is detected from the
  median of positive ADC values inside the gland (else the central third of the volume):
  median < 0.05 → mm²/s (×1e6); < 10 → 1e-3 mm²/s (×1e3); otherwise 1e-6 mm²/s (×1).

Fitting also checks the content (``data.checks``): a blank or near-constant T2 / DWI (from the
same percentiles) or ADC (inside the gland), and a gland median ADC outside the physical range
after unit detection, reject the study.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.checks import check_adc_range, check_contrast
from fedprostate.data.study import SEQUENCES, Study, StudyError

ADC_SCALE = 3000.0  # 1e-6 mm²/s that map to 1.0
CLIP = (-1.0, 4.0)
MAX_PERCENTILE_VOXELS = 400_000


def adc_sample(adc: sitk.Image, gland: sitk.Image | None = None) -> np.ndarray:
    """Finite positive ADC values inside the gland (the central third without one)."""
    values = sitk.GetArrayViewFromImage(adc)
    if gland is not None:
        on_adc = sitk.Resample(gland, adc, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        inside = sitk.GetArrayViewFromImage(on_adc) > 0
        sample = values[inside] if inside.any() else values
    else:
        z, y, x = (max(s // 3, 0) for s in values.shape)
        sample = values[
            z : values.shape[0] - z or None,
            y : values.shape[1] - y or None,
            x : values.shape[2] - x or None,
        ]
    sample = np.asarray(sample, dtype=np.float64)
    return sample[np.isfinite(sample) & (sample > 0)]


def adc_factor(median: float) -> float:
    """Factor turning stored ADC values with this gland median into 1e-6 mm²/s."""
    if median < 0.05:
        return 1e6
    if median < 10:
        return 1e3
    return 1.0


def detect_adc_factor(adc: sitk.Image, gland: sitk.Image | None = None) -> float:
    """Factor turning stored ADC values into 1e-6 mm²/s."""
    sample = adc_sample(adc, gland)
    if sample.size == 0:
        raise ValueError("ADC has no positive values")
    return adc_factor(float(np.median(sample)))


def robust_range(image: sitk.Image, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    arr = sitk.GetArrayViewFromImage(image).ravel()
    stride = max(1, arr.size // MAX_PERCENTILE_VOXELS)
    lo, hi = np.percentile(np.asarray(arr[::stride], dtype=np.float64), [low, high])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Normalization:
    """Per-study intensity mapping: ``(x - offset) * scale`` per sequence."""

    t2w_range: tuple[float, float]
    hbv_range: tuple[float, float]
    adc_factor: float  # stored value × adc_factor = 1e-6 mm²/s

    def apply(self, seq: str, values: np.ndarray) -> np.ndarray:
        if seq == "adc":
            out = values * (self.adc_factor / ADC_SCALE)
        else:
            lo, hi = self.t2w_range if seq == "t2w" else self.hbv_range
            out = (values - lo) / ((hi - lo) or 1.0)
        out = np.clip(out, *CLIP)
        return np.nan_to_num(out, nan=0.0).astype(np.float32)

    def as_dict(self) -> dict:
        return asdict(self)


def fit_normalization(study: Study) -> Normalization:
    """Per-study normalization; StudyError for blank / near-constant sequences or an ADC outside
    the physical range (``data.checks``)."""
    pid, paths = study.patient_id, study.source_paths
    sample = adc_sample(study.images["adc"], study.gland_mask)
    if sample.size == 0:
        raise StudyError(pid, "ADC has no positive values", paths.get("adc"))
    low, median, high = np.percentile(sample, [1, 50, 99])
    check_contrast("adc", float(low), float(high), pid, paths.get("adc", ""))
    factor = adc_factor(float(median))
    check_adc_range(float(median), factor, pid, paths.get("adc", ""))
    ranges = {}
    for seq in ("t2w", "hbv"):
        lo, hi = robust_range(study.images[seq])
        check_contrast(seq, lo, hi, pid, paths.get(seq, ""))
        ranges[seq] = (lo, hi)
    return Normalization(ranges["t2w"], ranges["hbv"], factor)


def describe() -> dict:
    """What meta.json records about the normalization."""
    return {
        "t2w": "per-study percentiles 1-99 -> 0-1, clipped to [-1, 4]",
        "hbv": "per-study percentiles 1-99 -> 0-1, clipped to [-1, 4]",
        "adc": f"physical 1e-6 mm2/s divided by {ADC_SCALE:g} (unit auto-detected)",
        "outside_fov": 0.0,
        "interpolation": "linear, world space, from each sequence's own grid",
    }


def frame(
    t2: sitk.Image, centre_mm, size_xy: tuple[int, int], spacing: float, n_slices: int = 1
) -> sitk.Image:
    """A grid in the T2 orientation with pixel (W//2, H//2, n//2) exactly at ``centre_mm``."""
    direction = np.asarray(t2.GetDirection(), dtype=np.float64).reshape(3, 3)
    dz = t2.GetSpacing()[2]
    width, height = size_xy
    offset = direction @ np.array([width // 2 * spacing, height // 2 * spacing, n_slices // 2 * dz])
    ref = sitk.Image([int(width), int(height), int(n_slices)], sitk.sitkFloat32)
    ref.SetSpacing((float(spacing), float(spacing), float(dz)))
    ref.SetDirection(tuple(direction.ravel()))
    ref.SetOrigin(tuple(np.asarray(centre_mm, dtype=np.float64) - offset))
    return ref


def sample(image: sitk.Image, reference: sitk.Image, nearest: bool = False) -> np.ndarray:
    """``image`` resampled in world space onto ``reference``: array [z, y, x], NaN outside."""
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(image, reference, sitk.Transform(), interp, float("nan"), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def aligned_volumes(study: Study, spacing: float = 0.5) -> dict[str, sitk.Image]:
    """The three sequences on one grid: T2 orientation and slices, ``spacing`` in-plane (raw units)."""
    t2 = study.images["t2w"]
    size, sp = t2.GetSize(), t2.GetSpacing()
    width = int(round(size[0] * sp[0] / spacing))
    height = int(round(size[1] * sp[1] / spacing))
    ref = sitk.Image([width, height, size[2]], sitk.sitkFloat32)
    ref.SetSpacing((spacing, spacing, sp[2]))
    ref.SetDirection(t2.GetDirection())
    # keep the field of view: first pixel centre shifted by half the change of pixel size
    direction = np.asarray(t2.GetDirection()).reshape(3, 3)
    shift = direction @ np.array([(spacing - sp[0]) / 2, (spacing - sp[1]) / 2, 0.0])
    ref.SetOrigin(tuple(np.asarray(t2.GetOrigin()) + shift))
    return {
        seq: sitk.Resample(
            study.images[seq], ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
        )
        for seq in SEQUENCES
    }
