"""Unlabeled crops for self-supervised pretraining, read from images only (never labels).

``src_dir`` may be a synth output (``unlabeled/images`` is used), a PI-CAI-style root (``images``)
or an images folder itself: ``<pid>/<pid>_<sid>_{t2w,adc,hbv}.mha``. Each study is normalized
exactly as in ``data prepare``; ``per_study`` crop centres are drawn uniformly in the central
region of the T2 volume (middle 40 % in-plane, middle half of the slices), where the prostate of a
prostate-centred field of view lies, from a generator seeded by (seed, study key). Studies that
cannot be read, and crops that fail the crop checks, are skipped with a one-line warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedprostate.data.crops import CropSpec, crop_at
from fedprostate.data.formats.base import read_image, study_rng, validate_study
from fedprostate.data.preprocess import fit_normalization
from fedprostate.data.study import SEQUENCES, Study, StudyError

log = logging.getLogger(__name__)


def images_root(src_dir: str | Path) -> Path:
    src = Path(src_dir)
    for candidate in (src / "unlabeled" / "images", src / "images"):
        if candidate.is_dir():
            return candidate
    return src


def list_unlabeled(src_dir: str | Path) -> list[tuple[str, dict[str, Path]]]:
    """(study key, sequence -> path) for every study with a T2 image, sorted by key."""
    out = []
    for t2 in sorted(images_root(src_dir).glob("*/*_t2w.mha")):
        key = t2.name[: -len("_t2w.mha")]
        out.append((key, {seq: t2.with_name(f"{key}_{seq}.mha") for seq in SEQUENCES}))
    return out


def extract_unlabeled_crops(
    src_dir: str | Path, crop: int = 64, spacing: float = 0.5, per_study: int = 8, seed: int = 0
) -> np.ndarray:
    """Crops [N, 3, crop, crop] float32 from every readable unlabeled study."""
    spec = CropSpec(mode="lesion", crop=crop, spacing=spacing)
    crops: list[np.ndarray] = []
    for key, paths in list_unlabeled(src_dir):
        pid = key.split("_")[0]
        try:
            images = {seq: read_image(paths[seq], pid, seq) for seq in SEQUENCES}
            study = Study(
                "unlabeled",
                pid,
                key.split("_", 1)[-1],
                images,
                source_paths={s: str(p) for s, p in paths.items()},
            )
            validate_study(study)
            norm = fit_normalization(study)
        except StudyError as exc:
            log.warning("skipped unlabeled study: %s", exc)
            continue
        t2 = images["t2w"]
        size = np.asarray(t2.GetSize(), dtype=float)
        rng = study_rng(seed, key)
        low = size * np.array([0.3, 0.3, 0.25])
        high = (size - 1) * np.array([0.7, 0.7, 0.75])
        for _ in range(per_study):
            index = rng.uniform(low, np.maximum(high, low))
            centre = t2.TransformContinuousIndexToPhysicalPoint(index.tolist())
            try:
                crops.append(crop_at(study, norm, centre, spec))
            except StudyError as exc:  # mostly outside a field of view, or constant
                log.warning("skipped unlabeled crop: %s", exc)
    if not crops:
        return np.zeros((0, 3, crop, crop), dtype=np.float32)
    return np.stack(crops).astype(np.float32)
