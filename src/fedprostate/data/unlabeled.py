"""Unlabeled crops for self-supervised pre-training, read from images only (never labels).

``src_dir`` may be a synth output (``unlabeled/images`` is used), a PI-CAI-style root (``images``)
or an images folder itself: ``<pid>/<pid>_<sid>_{t2w,adc,hbv}.mha``. Each study is normalized
exactly as in ``data prepare`` and cropped exactly as a finding is (``crop_at``: same crop size,
same spacing, T2 orientation), so pre-training sees what fine-tuning will see.

Where the crops are: a prostate MRI field of view is centred on the prostate, so ``per_study``
crop centres are drawn uniformly inside an ellipsoid around the centre of the T2 volume with
semi-axes ``REACH_MM`` (left-right, anterior-posterior, cranio-caudal) in world millimetres: the
gland (semi-axes about 25 × 18 × 22 mm) and the tissue around it (fat, muscle, rectal wall,
bladder base), whatever the scanner's field of view or voxel size. The draws come from a
generator seeded by (seed, study key), so a crop does not depend on the listing order or on the
number of worker processes. Studies that cannot be read, and crops that fail the crop checks
(mostly outside a sequence's field of view), are skipped and counted.

A pool written by :func:`save_pool` is one ``.safetensors`` file: ``crops`` (float16
[N, 3, crop, crop]) and ``study`` (int32 [N], the index of each crop's study in the metadata's
``studies`` list), so a federated run can give each site whole studies.
"""

from __future__ import annotations

import json
import logging
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedprostate.data.crops import CropSpec, crop_at
from fedprostate.data.formats.base import read_image, study_rng, validate_study
from fedprostate.data.preprocess import fit_normalization
from fedprostate.data.proposals import propose
from fedprostate.data.study import SEQUENCES, Study, StudyError

log = logging.getLogger(__name__)

REACH_MM = (30.0, 25.0, 20.0)
NORMALIZATION = "per-sequence, as in `data prepare` (fedprostate.data.unlabeled)"


class PoolError(ValueError):
    """An unlabeled pool that cannot be pre-trained on (no studies, no readable study, bad file)."""


@dataclass
class UnlabeledPool:
    crops: np.ndarray  # float32 [N, 3, crop, crop]
    study: np.ndarray  # int32 [N]: index into ``studies``
    studies: list[str]  # study keys <pid>_<sid>, sorted
    meta: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # one reason per skipped study

    def __len__(self) -> int:
        return int(self.crops.shape[0])


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


def crop_centres(t2, rng: np.random.Generator, n: int, reach=REACH_MM) -> list[tuple]:
    """``n`` world points uniform in the ellipsoid of semi-axes ``reach`` (mm, along the image
    axes) around the centre of the T2 volume."""
    size = np.asarray(t2.GetSize(), dtype=float)
    middle = np.asarray(t2.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    axes = np.asarray(t2.GetDirection(), dtype=float).reshape(3, 3)
    points = []
    for _ in range(n):
        direction = rng.normal(size=3)
        direction /= max(np.linalg.norm(direction), 1e-12)
        offset = direction * rng.random() ** (1 / 3) * np.asarray(reach)
        points.append(tuple((middle + axes @ offset).tolist()))
    return points


def _study_crops(args: tuple) -> tuple[str, list[np.ndarray], str | None]:
    """(key, crops, reason the study was skipped or None); runs in worker processes."""
    key, paths, spec, per_study, seed, reach, focal = args
    pid = key.split("_")[0]
    try:
        images = {seq: read_image(paths[seq], pid, seq) for seq in SEQUENCES}
        study = Study("unlabeled", pid, key.split("_", 1)[-1], images,
                      source_paths={s: str(p) for s, p in paths.items()})  # fmt: skip
        validate_study(study)
        norm = fit_normalization(study)
    except StudyError as exc:
        return key, [], str(exc)
    crops = []
    centres = crop_centres(images["t2w"], study_rng(seed, key), per_study - focal, reach)
    if focal:
        try:
            centres += [tuple(f.world_mm) for f in propose(study, top_k=focal)]
        except StudyError:
            pass
    for centre in centres:
        try:
            crops.append(crop_at(study, norm, centre, spec).astype(np.float32))
        except StudyError:  # mostly outside a sequence's field of view, or constant
            continue
    return key, crops, None


def extract_pool(
    src_dir: str | Path,
    crop: int = 64,
    spacing: float = 0.5,
    per_study: int = 8,
    seed: int = 0,
    workers: int = 1,
    reach=REACH_MM,
    focal: int = 0,
) -> UnlabeledPool:
    """Crops of every readable unlabeled study (see the module docstring); :class:`PoolError`
    when there is no study or none can be read."""
    listed = list_unlabeled(src_dir)
    if not listed:
        raise PoolError(
            f"{src_dir}: no unlabeled studies (expected <pid>/<pid>_<sid>_t2w.mha with adc and "
            f"hbv beside it under {images_root(src_dir)})"
        )
    spec = CropSpec(mode="lesion", crop=crop, spacing=spacing)
    if not 0 <= focal <= per_study:
        raise PoolError(f"focal crops ({focal}) must lie in [0, per_study = {per_study}]")
    jobs = [(key, paths, spec, per_study, seed, tuple(reach), focal) for key, paths in listed]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_study_crops, jobs, chunksize=4))
    else:
        results = [_study_crops(job) for job in jobs]
    crops, study, studies, skipped = [], [], [], []
    for key, found, reason in results:
        if reason is not None:
            log.info("skipped unlabeled study: %s", reason)
            skipped.append(reason)
            continue
        if found:
            study.extend([len(studies)] * len(found))
            studies.append(key)
            crops.extend(found)
    if not crops:
        first = f"; first: {skipped[0]}" if skipped else ""
        raise PoolError(
            f"{src_dir}: none of the {len(listed)} unlabeled studies gave a usable crop "
            f"({len(skipped)} unreadable{first})"
        )
    meta = {"src": str(src_dir), "crop": crop, "spacing": spacing, "per_study": per_study,
            "seed": seed, "reach_mm": list(reach), "focal": focal, "normalization": NORMALIZATION,
            "n_listed": len(listed), "n_skipped": len(skipped)}  # fmt: skip
    return UnlabeledPool(np.stack(crops), np.asarray(study, np.int32), studies, meta, skipped)


def extract_unlabeled_crops(
    src_dir: str | Path, crop: int = 64, spacing: float = 0.5, per_study: int = 8, seed: int = 0
) -> np.ndarray:
    """Crops [N, 3, crop, crop] float32 from every readable unlabeled study (empty if none)."""
    try:
        return extract_pool(src_dir, crop, spacing, per_study, seed).crops
    except PoolError:
        return np.zeros((0, 3, crop, crop), dtype=np.float32)


def save_pool(path: str | Path, pool: UnlabeledPool) -> Path:
    """Write the pool as one ``.safetensors`` file (crops float16, study index, metadata)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"studies": json.dumps(pool.studies), "meta": json.dumps(pool.meta)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {"crops": pool.crops.astype(np.float16), "study": pool.study.astype(np.int32)},
        str(tmp),
        metadata=meta,
    )
    tmp.replace(path)
    return path


def load_pool(path: str | Path) -> UnlabeledPool:
    """A pool file (or any ``.safetensors`` with a ``crops`` tensor: one study per crop)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            keys, file_meta = set(handle.keys()), handle.metadata() or {}
            if "crops" not in keys:
                raise PoolError(f"{path}: no tensor named 'crops'")
            crops = handle.get_tensor("crops").astype(np.float32)
            study = handle.get_tensor("study") if "study" in keys else None
    except (SafetensorError, OSError) as exc:
        raise PoolError(f"{path}: not a readable .safetensors file ({exc})") from None
    if crops.ndim != 4 or crops.shape[1] != 3 or crops.shape[2] != crops.shape[3]:
        raise PoolError(f"{path}: crops have shape {tuple(crops.shape)}, expected [N, 3, H, H]")
    if study is None:
        study = np.arange(len(crops), dtype=np.int32)
    studies = json.loads(file_meta.get("studies", "null")) or [
        f"crop{i}" for i in range(len(crops))
    ]
    meta = json.loads(file_meta.get("meta", "{}"))
    meta.setdefault("normalization", file_meta.get("normalization", "as stored"))
    return UnlabeledPool(crops, study.astype(np.int32), list(studies), meta)


def site_of_study(key: str, n_sites: int, seed: int = 0) -> int:
    """The site (0..n_sites-1) holding a study in a federated split of one pool: a hash of the
    study key and the seed, so whole studies go to one site and the split is reproducible."""
    return zlib.crc32(f"{seed}:{key}".encode()) % n_sites


def split_pool(pool: UnlabeledPool, n_sites: int, seed: int = 0) -> list[np.ndarray]:
    """Crop indices of each site (whole studies per site)."""
    if n_sites < 1:
        raise PoolError(f"need at least 1 site, got {n_sites}")
    owner = np.array([site_of_study(k, n_sites, seed) for k in pool.studies], dtype=np.int64)
    site = owner[pool.study]
    parts = [np.flatnonzero(site == s) for s in range(n_sites)]
    empty = [s for s, p in enumerate(parts) if len(p) < 2]
    if empty:
        raise PoolError(
            f"the pool's {len(pool.studies)} studies leave site(s) {empty} of {n_sites} with "
            "fewer than 2 crops: use fewer sites or a larger pool"
        )
    return parts
