"""Lesion and whole-organ crops, sampled as small planes in world space.

A crop is a plane in the T2 orientation (``preprocess.frame``) sampled from each sequence's own
grid, so a world point lands on the same pixel in every channel whatever the grids were.

* Lesion mode: one crop per finding (a reader's mark, a proposal or a sampled location), ``crop``×``crop`` pixels at ``spacing`` mm, the finding
  exactly at pixel (row ``crop//2``, column ``crop//2``).
* Organ mode: the whole gland's in-plane bounding box (square, 20 % margin) on every T2 slice
  that contains gland, resampled to ``crop``×``crop``; the label is the case label.

With ``n_slices`` > 1 the neighbouring T2 slices (± slice spacing along the T2 normal) are added:
channels are slice-major, ``[t2w, adc, hbv]`` for the lowest slice first (``channel_names``).

A crop with more than ``checks.MAX_OUT_OF_VIEW`` of its pixels outside a sequence's field of view,
or with a constant channel (``checks.crop_problem``), is never zero-filled: a reader / biopsied /
mask finding's crop rejects the study (its label set would be incomplete); an optional crop (a
sampled negative, an organ-mode slice, e.g. a gland slice the DWI slab does not reach) is dropped
and its reason appended to ``dropped``. A study left with no crop is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.checks import crop_problem
from fedprostate.data.preprocess import ADC_SCALE, Normalization, frame, sample
from fedprostate.data.study import SEQUENCES, Finding, Study, StudyError

DEFAULT_RADIUS_MM = 3.0
ORGAN_MARGIN = 1.2


@dataclass(frozen=True)
class CropSpec:
    mode: str = "lesion"  # lesion | organ
    crop: int = 64
    spacing: float = 0.5
    n_slices: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("lesion", "organ"):
            raise ValueError(f"mode {self.mode!r}: choose lesion or organ")
        if self.crop < 8 or self.spacing <= 0:
            raise ValueError("crop must be >= 8 pixels and spacing > 0 mm")
        if self.n_slices < 1 or self.n_slices % 2 == 0:
            raise ValueError(f"n_slices={self.n_slices}: must be odd and >= 1")


def channel_names(n_slices: int) -> list[str]:
    offsets = [k - n_slices // 2 for k in range(n_slices)]
    return [seq if n_slices == 1 else f"{seq}@{o:+d}" for o in offsets for seq in SEQUENCES]


def _checked(study: Study, raw: dict[str, np.ndarray], what: str) -> None:
    for seq in SEQUENCES:
        if problem := crop_problem(raw[seq], seq):
            raise StudyError(
                study.patient_id, f"{what}: {problem}", study.source_paths.get(seq, "")
            )


def crop_at(
    study: Study,
    norm: Normalization,
    centre_mm,
    spec: CropSpec,
    spacing: float | None = None,
    what: str = "crop",
) -> np.ndarray:
    """Normalized crop [3·n_slices, H, W] centred on ``centre_mm``; StudyError (naming ``what``)
    when it lies mostly outside a sequence or a channel is constant."""
    ref = frame(
        study.images["t2w"],
        centre_mm,
        (spec.crop, spec.crop),
        spacing or spec.spacing,
        spec.n_slices,
    )
    raw = {seq: sample(study.images[seq], ref) for seq in SEQUENCES}  # [n, H, W], NaN outside
    _checked(study, raw, what)
    planes = [norm.apply(seq, raw[seq]) for seq in SEQUENCES]
    stacked = np.stack(planes, axis=1)  # [n, 3, H, W]
    return stacked.reshape(-1, spec.crop, spec.crop)


def adc_mean(study: Study, norm: Normalization, centre_mm, radius_mm: float | None) -> float:
    """Mean ADC (1e-6 mm²/s) inside a sphere of ``radius_mm`` (default 3 mm) around a point."""
    radius = min(float(radius_mm or DEFAULT_RADIUS_MM), 15.0)
    step = max(0.5, radius / 6.0)
    n = 2 * int(np.ceil(radius / step)) + 1
    t2 = study.images["t2w"]
    direction = np.asarray(t2.GetDirection()).reshape(3, 3)
    ref = sitk.Image([n, n, n], sitk.sitkFloat32)
    ref.SetSpacing((step, step, step))
    ref.SetDirection(tuple(direction.ravel()))
    ref.SetOrigin(tuple(np.asarray(centre_mm) - direction @ np.full(3, n // 2 * step)))
    values = sample(study.images["adc"], ref)
    grid = (np.indices((n, n, n)) - n // 2) * step
    inside = (grid**2).sum(axis=0) <= radius**2
    picked = values[inside]
    picked = picked[np.isfinite(picked)]
    return float(picked.mean() * norm.adc_factor) if picked.size else float("nan")


@dataclass
class Crop:
    array: np.ndarray  # [C, H, W] float32
    finding_id: str
    label: int
    isup: int
    zone: str
    source: str
    slice: int
    adc_mean: float
    pirads: int | None = None  # the radiologist's score of a reader finding


def lesion_crops(
    study: Study, norm: Normalization, spec: CropSpec, dropped: list[str] | None = None
) -> list[Crop]:
    """One crop per finding; a study without findings (nothing marked) has none. A sampled
    location whose crop fails a check is dropped (and reported in ``dropped``); a reader or
    proposal finding's failure rejects the study."""
    out = []
    for f in study.findings:
        try:
            out.append(_finding_crop(study, norm, spec, f))
        except StudyError as exc:
            if f.source != "sampled":
                raise
            _drop(dropped, exc)
    return out


def _drop(dropped: list[str] | None, exc: StudyError) -> None:
    if dropped is not None:
        dropped.append(exc.reason)


def _finding_crop(study: Study, norm: Normalization, spec: CropSpec, f: Finding) -> Crop:
    return Crop(
        array=crop_at(study, norm, f.world_mm, spec, what=f"crop of finding {f.finding_id}"),
        finding_id=f.finding_id,
        label=int(f.clinsig),
        isup=int(f.isup),
        zone=f.zone,
        source=f.source,
        slice=-1,
        adc_mean=adc_mean(study, norm, f.world_mm, f.radius_mm),
        pirads=f.pirads,
    )


def organ_box(gland: sitk.Image) -> tuple[list[int], tuple[float, float], float]:
    """Gland slices, in-plane centre (continuous T2 index) and square side in mm."""
    arr = sitk.GetArrayViewFromImage(gland) > 0
    slices = np.flatnonzero(arr.any(axis=(1, 2))).tolist()
    ys = np.flatnonzero(arr.any(axis=(0, 2)))
    xs = np.flatnonzero(arr.any(axis=(0, 1)))
    sx, sy = gland.GetSpacing()[:2]
    side = max((xs[-1] - xs[0] + 1) * sx, (ys[-1] - ys[0] + 1) * sy) * ORGAN_MARGIN
    return slices, ((xs[0] + xs[-1]) / 2.0, (ys[0] + ys[-1]) / 2.0), float(side)


def organ_crops(
    study: Study, norm: Normalization, spec: CropSpec, dropped: list[str] | None = None
) -> list[Crop]:
    gland = study.gland_mask
    if gland is None or not sitk.GetArrayViewFromImage(gland).any():
        raise StudyError(
            study.patient_id,
            "organ mode needs a gland mask and none was found",
            study.source_paths.get("t2w"),
        )
    if study.case_label is None:
        raise StudyError(
            study.patient_id, "organ mode needs a case label", study.source_paths.get("t2w")
        )
    slices, (cx, cy), side = organ_box(gland)
    spacing = side / spec.crop
    half = spec.n_slices // 2
    # one stack of planes covering every gland slice (± neighbours), resampled once per sequence;
    # plane j is exactly the frame crop_at would build for T2 slice slices[0] - half + j
    first = slices[0] - half
    corner = frame(
        study.images["t2w"],
        gland.TransformContinuousIndexToPhysicalPoint((cx, cy, float(first))),
        (spec.crop, spec.crop),
        spacing,
        1,
    )
    stack = sitk.Image([spec.crop, spec.crop, slices[-1] + half - first + 1], sitk.sitkFloat32)
    stack.SetOrigin(corner.GetOrigin())
    stack.SetSpacing(corner.GetSpacing())
    stack.SetDirection(corner.GetDirection())
    raw = {seq: sample(study.images[seq], stack) for seq in SEQUENCES}
    planes = {seq: norm.apply(seq, raw[seq]) for seq in SEQUENCES}
    in_gland = sample(gland, stack, nearest=True) > 0
    isup = max((f.isup for f in study.findings if f.clinsig), default=0)
    if not isup and study.lesion_mask is not None and study.case_label:
        isup = int(sitk.GetArrayViewFromImage(study.lesion_mask).max())
    out, problems = [], []
    for k in slices:
        j = k - slices[0]  # first plane of this crop's window in the stack
        window = {seq: raw[seq][j : j + spec.n_slices] for seq in SEQUENCES}
        try:
            _checked(study, window, f"organ crop of T2 slice {k}")
        except StudyError as exc:
            problems.append(exc)
            _drop(dropped, exc)
            continue
        array = np.stack([planes[seq][j : j + spec.n_slices] for seq in SEQUENCES], axis=1)
        mask = in_gland[j + half]
        adc = planes["adc"][j + half]
        mean = float(adc[mask].mean() * ADC_SCALE) if mask.any() else float("nan")
        out.append(
            Crop(
                array.reshape(-1, spec.crop, spec.crop),
                f"slice{k:03d}",
                int(study.case_label),
                int(isup),
                "gland",
                "organ",
                int(k),
                mean,
            )
        )
    if not out:
        raise StudyError(
            study.patient_id, f"no usable organ crop ({problems[0].reason})", problems[0].path
        )
    return out


def study_crops(
    study: Study, norm: Normalization, spec: CropSpec, dropped: list[str] | None = None
) -> list[Crop]:
    """The study's crops; optional crops that fail the crop checks are dropped (reasons appended
    to ``dropped``), a finding's that fails them rejects the study."""
    make = lesion_crops if spec.mode == "lesion" else organ_crops
    crops = make(study, norm, spec, dropped)
    if not crops:
        raise StudyError(
            study.patient_id,
            f"no usable crop ({'; '.join(dropped or []) or 'every crop failed the checks'})",
            study.source_paths.get("t2w"),
        )
    return crops
