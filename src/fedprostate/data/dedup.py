"""Cross-collection duplicates (e.g. PI-CAI contains ProstateX cases) by image fingerprint.

The fingerprint hashes the T2 grid shape and spacing (rounded to 0.01 mm) and direction (0.01),
plus the central region of the T2 volume (middle half in-plane, middle half of the slices),
block-averaged to 4×8×8, normalised by its median and inter-quartile range and quantised to
1/8. It survives re-saving (DICOM → MHA, int16 → float32, other IDs or origin) but not
resampling. The first study seen is kept; later ones with the same fingerprint are rejected.
"""

from __future__ import annotations

import hashlib

import numpy as np
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.study import Study


def _block_mean(arr: np.ndarray, shape=(4, 8, 8)) -> np.ndarray:
    out = arr
    for axis, n in enumerate(shape):
        size = out.shape[axis]
        n = min(n, size)
        edges = np.linspace(0, size, n + 1).astype(int)
        out = np.stack(
            [
                np.take(out, range(a, b), axis=axis).mean(axis=axis)
                for a, b in zip(edges[:-1], edges[1:], strict=True)
            ],
            axis=axis,
        )
    return out


def fingerprint(image: sitk.Image) -> str:
    arr = sitk.GetArrayViewFromImage(image)
    z, y, x = (s // 4 for s in arr.shape)
    centre = np.asarray(
        arr[z : arr.shape[0] - z, y : arr.shape[1] - y, x : arr.shape[2] - x], dtype=np.float64
    )
    small = _block_mean(centre)
    q1, med, q3 = np.percentile(small, [25, 50, 75])
    code = np.round((small - med) / max(q3 - q1, 1e-6) * 8).clip(-127, 127).astype(np.int8)
    geometry = (
        image.GetSize(),
        tuple(round(s, 2) for s in image.GetSpacing()),
        tuple(round(d, 2) + 0.0 for d in image.GetDirection()),
    )
    h = hashlib.sha1(repr(geometry).encode())
    h.update(code.tobytes())
    return h.hexdigest()[:20]


class DuplicateFinder:
    """Remembers fingerprints; ``check`` returns the key of an earlier identical study."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def check(self, study: Study) -> str | None:
        fp = fingerprint(study.images["t2w"])
        earlier = self.seen.get(fp)
        if earlier is None:
            self.seen[fp] = f"{study.site}/{study.patient_id}_{study.study_id}"
        return earlier
