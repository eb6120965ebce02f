"""PI-CAI detection maps: each finding's probability painted on its region, in T2 space.

picai_eval's ``evaluate(y_det, y_true)`` expects *detection maps*: volumes on the label's grid
whose connected components (26-connectivity) each carry one constant confidence. A finding's
region is the ball of its ``radius_mm`` (``DEFAULT_RADIUS_MM`` when unknown) around its centre,
drawn on the study's T2 grid (oblique grids included: distances are measured in world mm). Where
two balls touch they form one component: it takes the higher probability, as picai_eval would.

The matching reference is the study's lesion mask on the same grid (all zeros for a study
without one): :func:`write_detection_maps` writes both, so that::

    from picai_eval import evaluate
    evaluate(y_det=[...detection_maps/<case>.nii.gz], y_true=[...labels/<case>.nii.gz])

reads them directly (paths or arrays).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813
from scipy import ndimage

from fedprostate.data.study import Study

DEFAULT_RADIUS_MM = 5.0
SUFFIXES = (".nii.gz", ".mha")


def _ball(
    reference: sitk.Image, centre_mm, radius_mm: float
) -> tuple[tuple[slice, ...], np.ndarray]:
    """(z, y, x) slices of the ball's bounding box and the ball mask inside it."""
    spacing = np.array(reference.GetSpacing())
    centre = np.array(reference.TransformPhysicalPointToContinuousIndex(tuple(centre_mm)))
    half = np.ceil(radius_mm / spacing).astype(int) + 1
    size = np.array(reference.GetSize())
    lo = np.clip(np.floor(centre).astype(int) - half, 0, size)
    hi = np.clip(np.ceil(centre).astype(int) + half + 1, 0, size)
    if np.any(hi <= lo):
        return (slice(0, 0),) * 3, np.zeros((0, 0, 0), bool)
    zz, yy, xx = np.meshgrid(*(np.arange(lo[d], hi[d]) for d in (2, 1, 0)), indexing="ij")
    # index offsets times spacing are mm along the grid's axes; the direction matrix only rotates
    # them, so the distance in world mm is their norm (oblique grids included)
    offset = np.stack([xx - centre[0], yy - centre[1], zz - centre[2]], axis=-1) * spacing
    dist = np.linalg.norm(offset, axis=-1)
    return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])), dist <= radius_mm


def detection_map(
    study: Study, scores: Mapping[str, float], default_radius_mm: float = DEFAULT_RADIUS_MM
) -> sitk.Image:
    """A float32 detection map on the study's T2 grid from ``{finding_id: probability}``.

    Findings without a score are left out; probabilities must lie in [0, 1].
    """
    t2 = study.images["t2w"]
    volume = np.zeros(t2.GetSize()[::-1], np.float32)
    for finding in study.findings:
        if finding.finding_id not in scores:
            continue
        p = float(scores[finding.finding_id])
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"finding {finding.finding_id}: probability {p} outside [0, 1]")
        box, ball = _ball(t2, finding.world_mm, finding.radius_mm or default_radius_mm)
        region = volume[box]
        region[ball] = np.maximum(region[ball], p)
    components, n = ndimage.label(volume > 0, structure=np.ones((3, 3, 3)))
    if n:
        top = ndimage.maximum(volume, components, index=np.arange(1, n + 1))
        volume = np.concatenate([[0.0], top]).astype(np.float32)[components]
    image = sitk.GetImageFromArray(volume)
    image.CopyInformation(t2)
    return image


def reference_labels(study: Study) -> sitk.Image:
    """The study's lesion mask (0/1, uint8) on the T2 grid; all zeros when it has none."""
    t2 = study.images["t2w"]
    if study.lesion_mask is None:
        labels = sitk.Image(t2.GetSize(), sitk.sitkUInt8)
        labels.CopyInformation(t2)
        return labels
    labels = sitk.Cast(study.lesion_mask > 0, sitk.sitkUInt8)
    labels.CopyInformation(t2)
    return labels


def write_detection_maps(
    studies: Sequence[Study],
    rows: Sequence[Mapping],
    out: str | Path,
    suffix: str = ".nii.gz",
    default_radius_mm: float = DEFAULT_RADIUS_MM,
) -> list[dict[str, str]]:
    """``out/detection_maps/<pid>_<sid><suffix>`` and ``out/labels/<pid>_<sid><suffix>`` per study.

    ``rows`` are prediction rows (``patient_id``, ``study_id``, ``finding_id``, ``score``).
    Returns one {case, detection_map, label} entry per study (paths as written).
    """
    if suffix not in SUFFIXES:
        raise ValueError(f"detection map suffix {suffix!r}: choose one of {SUFFIXES}")
    out = Path(out)
    (out / "detection_maps").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    written = []
    for study in studies:
        scores = {
            str(r["finding_id"]): float(r["score"])
            for r in rows
            if str(r["patient_id"]) == study.patient_id
            and str(r.get("study_id", study.study_id)) == study.study_id
        }
        case = study.key
        det_path = out / "detection_maps" / f"{case}{suffix}"
        label_path = out / "labels" / f"{case}{suffix}"
        sitk.WriteImage(detection_map(study, scores, default_radius_mm), str(det_path), True)
        sitk.WriteImage(reference_labels(study), str(label_path), True)
        written.append({"case": case, "detection_map": str(det_path), "label": str(label_path)})
    return written
