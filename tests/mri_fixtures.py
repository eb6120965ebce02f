"""Tiny bpMRI fixtures with known geometry, written in the real on-disk layouts.

Every image is an analytic phantom evaluated at each voxel's *world* position, so structures
(gland, lesions, a bright marker) sit at the same world coordinate in every sequence whatever the
grid: T2 on a fine grid, ADC/DWI on a coarser, shifted (optionally differently rotated) grid.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

CENTRE = np.array([12.0, -30.0, 45.0])  # gland centre, LPS mm


def rotation(ax: float = 0.0, ay: float = 0.0, az: float = 0.0) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class Grid:
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # world mm added to the centred origin

    def origin(self, centre=CENTRE) -> np.ndarray:
        half = (np.asarray(self.size) - 1) / 2 * np.asarray(self.spacing)
        return np.asarray(centre) - self.direction @ half + np.asarray(self.shift)

    def world(self, centre=CENTRE) -> np.ndarray:
        """World coordinates of every voxel, array [z, y, x, 3]."""
        k, j, i = np.indices(self.size[::-1], dtype=np.float64)
        idx = np.stack([i, j, k], axis=-1) * np.asarray(self.spacing)
        return self.origin(centre) + idx @ self.direction.T

    def image(self, values: np.ndarray, centre=CENTRE) -> sitk.Image:
        img = sitk.GetImageFromArray(values)
        img.SetSpacing(tuple(float(s) for s in self.spacing))
        img.SetOrigin(tuple(self.origin(centre)))
        img.SetDirection(tuple(self.direction.ravel()))
        return img


@dataclass
class Phantom:
    """One study: gland ellipsoid, lesions (world, radius, isup), optional marker, findings."""

    patient_id: str
    study_id: str
    site: str = "siteA"
    lesions: list[tuple[tuple[float, float, float], float, int]] = field(default_factory=list)
    benign: list[tuple[tuple[float, float, float], str]] = field(default_factory=list)  # biopsied
    marker: tuple[float, float, float] | None = None
    t2_grid: Grid = field(default_factory=lambda: Grid((56, 56, 12), (1.0, 1.0, 3.0)))
    dwi_grid: Grid = field(
        default_factory=lambda: Grid((30, 30, 12), (2.0, 2.0, 3.0), shift=(0.37, -0.61, 0.9))
    )
    adc_units: str = "1e-6"  # "1e-6" (int16) or "1e-3" (float32)
    case_level_only: bool = False  # positive case whose lesion mask is written empty
    seed: int = 0

    @property
    def case_label(self) -> int:
        return int(any(isup >= 2 for _, _, isup in self.lesions))

    def _tissue(self, pts: np.ndarray, seq: str) -> np.ndarray:
        base = {
            "t2w": (350.0, 700.0, 300.0),
            "adc": (2000.0, 1500.0, 700.0),
            "hbv": (80.0, 200.0, 600.0),
        }[seq]
        rel = (pts - CENTRE) / np.array([20.0, 16.0, 16.0])
        values = np.where((rel**2).sum(-1) <= 1.0, base[1], base[0])
        for world, radius, _ in self.lesions:
            values = np.where(((pts - world) ** 2).sum(-1) <= radius**2, base[2], values)
        if self.marker is not None:
            d2 = ((pts - np.asarray(self.marker)) ** 2).sum(-1)
            values = values + {"t2w": 3000.0, "adc": 4000.0, "hbv": 3000.0}[seq] * np.exp(
                -d2 / (2 * 2.0**2)
            )
        return values

    def images(self) -> dict[str, sitk.Image]:
        rng = np.random.default_rng(self.seed)
        out = {}
        for seq in ("t2w", "adc", "hbv"):
            grid = self.t2_grid if seq == "t2w" else self.dwi_grid
            values = self._tissue(grid.world(), seq) + rng.normal(0, 10, grid.size[::-1])
            if seq == "adc" and self.adc_units == "1e-3":
                arr = (values / 1000.0).astype(np.float32)
            else:
                arr = np.clip(values, 0, 32000).astype(np.int16)
            out[seq] = grid.image(arr)
        return out

    def lesion_mask(self) -> sitk.Image:
        pts = self.t2_grid.world()
        mask = np.zeros(pts.shape[:3], dtype=np.uint8)
        if not self.case_level_only:
            for world, radius, isup in self.lesions:
                mask[((pts - world) ** 2).sum(-1) <= radius**2] = isup
        return self.t2_grid.image(mask)

    def gland_mask(self) -> sitk.Image:
        rel = (self.t2_grid.world() - CENTRE) / np.array([20.0, 16.0, 16.0])
        return self.t2_grid.image(((rel**2).sum(-1) <= 1.0).astype(np.uint8))


def marker_centroid(plane: np.ndarray) -> np.ndarray:
    """(row, col) centroid of the part of the image above half the marker's height."""
    base = np.median(plane)
    weights = np.clip(plane - (base + 0.5 * (plane.max() - base)), 0, None)
    rows, cols = np.indices(plane.shape)
    return np.array([(rows * weights).sum(), (cols * weights).sum()]) / weights.sum()


MARKSHEET_COLUMNS = [
    "patient_id",
    "study_id",
    "mri_date",
    "patient_age",
    "psa",
    "psad",
    "prostate_volume",
    "histopath_type",
    "lesion_GS",
    "lesion_ISUP",
    "case_ISUP",
    "case_csPCa",
    "center",
]


def marksheet_row(p: Phantom) -> dict:
    isups = [isup for _, _, isup in p.lesions]
    return {
        "patient_id": p.patient_id,
        "study_id": p.study_id,
        "mri_date": "2020-01-01",
        "patient_age": "66",
        "psa": "7.1",
        "psad": "0.15",
        "prostate_volume": "45",
        "histopath_type": "MRBx" if isups else "",
        "lesion_GS": "",
        "lesion_ISUP": ",".join(map(str, isups)),
        "case_ISUP": str(max(isups, default=0)),
        "case_csPCa": "YES" if p.case_label else "NO",
        "center": p.site,
    }


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


READER_COLUMNS = ["patient_id", "study_id", "finding_id", "x", "y", "z", "zone", "pirads", "isup"]


def reader_rows(p: Phantom) -> list[dict]:
    """The radiologist's marks of a phantom: every lesion (PI-RADS 5 for csPCa, 3 otherwise)
    and every benign finding (PI-RADS 3, biopsy benign), as ``radiology/findings.csv`` rows."""
    rows = []
    for k, (world, _, isup) in enumerate(p.lesions, start=1):
        rows.append({"finding_id": f"M{k}", "world": world, "pirads": 5 if isup >= 2 else 3,
                     "isup": isup})  # fmt: skip
    for k, (world, _) in enumerate(p.benign, start=len(rows) + 1):
        rows.append({"finding_id": f"M{k}", "world": world, "pirads": 3, "isup": 0})
    return [
        {"patient_id": p.patient_id, "study_id": p.study_id, "finding_id": r["finding_id"],
         "x": f"{r['world'][0]:.2f}", "y": f"{r['world'][1]:.2f}", "z": f"{r['world'][2]:.2f}",
         "zone": "PZ", "pirads": r["pirads"], "isup": r["isup"]}
        for r in rows
    ]  # fmt: skip


def write_picai(
    root: Path, phantoms: list[Phantom], marksheet_at_root: bool = False, reader_table: bool = True
) -> Path:
    """PI-CAI layout; ``reader_table`` also writes ``radiology/findings.csv`` (the marks)."""
    labels = root / "labels"
    for p in phantoms:
        key = f"{p.patient_id}_{p.study_id}"
        folder = root / "images" / p.patient_id
        folder.mkdir(parents=True, exist_ok=True)
        for seq, img in p.images().items():
            sitk.WriteImage(img, str(folder / f"{key}_{seq}.mha"))
        les = labels / "csPCa_lesion_delineations" / "human_expert" / "resampled"
        gland = labels / "anatomical_delineations" / "whole_gland" / "AI" / "Bosma22b"
        les.mkdir(parents=True, exist_ok=True)
        gland.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(p.lesion_mask(), str(les / f"{key}.nii.gz"))
        sitk.WriteImage(p.gland_mask(), str(gland / f"{key}.nii.gz"))
    sheet = (
        root / "marksheet.csv"
        if marksheet_at_root
        else labels / "clinical_information" / "marksheet.csv"
    )
    write_csv(sheet, [marksheet_row(p) for p in phantoms], MARKSHEET_COLUMNS)
    if reader_table:
        marks = [row for p in phantoms for row in reader_rows(p)]
        write_csv(root / "radiology" / "findings.csv", marks, READER_COLUMNS)
    return root


def picai_phantoms(n: int = 6, site_names=("siteA", "siteB"), seed: int = 0) -> list[Phantom]:
    """``n`` small studies alternating sites: every other one with one csPCa lesion, the others
    with one benign finding the radiologist marks (normal tissue)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        lesions, benign = [], []
        offset = rng.uniform(-6, 6, 3) * np.array([1, 1, 0.5])
        if k % 2 == 0:
            lesions = [(tuple(CENTRE + offset), 4.0, int(2 + k % 4))]
        else:
            benign = [(tuple(CENTRE + offset), "benign")]
        out.append(
            Phantom(
                str(10000 + k),
                str(1000000 + k),
                site_names[k % len(site_names)],
                lesions=lesions,
                benign=benign,
                seed=k,
                adc_units="1e-3" if k % 3 == 0 else "1e-6",
            )
        )
    return out


# ------------------------------------------------------------------ DICOM (ProstateX)


def write_dicom_series(
    folder: Path,
    image: sitk.Image,
    description: str,
    institution: str,
    patient_id: str,
    series_uid: str,
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0008|103e": description,
            "0008|0080": institution,
            "0010|0020": patient_id,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(
                f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))
            ),
            "0020|0037": "\\".join(f"{v:.8f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": f"{image.GetSpacing()[2]:.4f}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        path = folder / f"{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(sl)
        files.append(path)
    return files


PROSTATEX_SERIES = {
    "t2w": "t2_tse_tra",
    "adc": "ep2d_diff_tra_ADC",
    "hbv": "ep2d_diff_tra_CALC_BVAL",
}
PROSTATEX_COLUMNS = ["ProxID", "fid", "pos", "zone", "ClinSig"]


def write_prostatex_study(root: Path, p: Phantom, images: dict[str, sitk.Image] | None = None):
    images = images or p.images()
    base = root / p.patient_id / "1.3.6.1.4.1.14519.5.2.1.7311"
    for n, (seq, desc) in enumerate(PROSTATEX_SERIES.items()):
        uid = f"1.2.826.0.1.3680043.2.1125.{abs(hash(p.patient_id)) % 10**6}.{n + 1}"
        write_dicom_series(base / f"{n + 1}-{desc}", images[seq], desc, p.site, p.patient_id, uid)


def prostatex_rows(p: Phantom) -> list[dict]:
    rows = []
    for fid, (world, _, isup) in enumerate(p.lesions, start=1):
        rows.append(
            {
                "ProxID": p.patient_id,
                "fid": fid,
                "pos": " ".join(f"{v:.4f}" for v in world),
                "zone": "PZ",
                "ClinSig": "TRUE" if isup >= 2 else "FALSE",
            }
        )
    for n, (world, zone) in enumerate(p.benign, start=len(p.lesions) + 1):
        rows.append(
            {
                "ProxID": p.patient_id,
                "fid": n,
                "pos": " ".join(f"{v:.4f}" for v in world),
                "zone": zone,
                "ClinSig": "FALSE",
            }
        )
    return rows


def write_prostatex(root: Path, phantoms: list[Phantom]) -> Path:
    rows = []
    for p in phantoms:
        write_prostatex_study(root, p)
        rows += prostatex_rows(p)
    write_csv(root / "ProstateX-Findings-Train.csv", rows, PROSTATEX_COLUMNS)
    return root


# ------------------------------------------------------------------ Prostate158 and generic


def write_prostate158(root: Path, phantoms: list[Phantom]) -> Path:
    for p in phantoms:
        folder = root / p.patient_id
        folder.mkdir(parents=True, exist_ok=True)
        for seq, name in (("t2w", "t2"), ("adc", "adc"), ("hbv", "dwi")):
            sitk.WriteImage(p.images()[seq], str(folder / f"{name}.nii.gz"))
        tumour = sitk.Cast(p.lesion_mask() > 0, sitk.sitkUInt8)
        sitk.WriteImage(tumour, str(folder / "t2_tumor_reader1.nii.gz"))
        anatomy = sitk.Cast(p.gland_mask(), sitk.sitkUInt8) * 2  # all PZ
        sitk.WriteImage(anatomy, str(folder / "t2_anatomy_reader1.nii.gz"))
    return root


GENERIC_COLUMNS = [
    "patient_id",
    "study_id",
    "site",
    "t2w",
    "adc",
    "hbv",
    "x",
    "y",
    "z",
    "label",
    "zone",
    "isup",
    "gland",
]


def write_generic(root: Path, phantoms: list[Phantom]) -> Path:
    rows = []
    for p in phantoms:
        folder = root / p.patient_id
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for seq, img in p.images().items():
            sitk.WriteImage(img, str(folder / f"{seq}.nii.gz"))
            paths[seq] = f"{p.patient_id}/{seq}.nii.gz"
        sitk.WriteImage(p.gland_mask(), str(folder / "gland.nii.gz"))
        common = {
            "patient_id": p.patient_id,
            "study_id": p.study_id,
            "site": p.site,
            **paths,
            "gland": f"{p.patient_id}/gland.nii.gz",
        }
        for world, _, isup in p.lesions:
            rows.append(
                {
                    **common,
                    "x": world[0],
                    "y": world[1],
                    "z": world[2],
                    "label": int(isup >= 2),
                    "zone": "PZ",
                    "isup": isup,
                }
            )
        for world, zone in p.benign:
            rows.append(
                {
                    **common,
                    "x": world[0],
                    "y": world[1],
                    "z": world[2],
                    "label": 0,
                    "zone": zone,
                    "isup": 0,
                }
            )
    write_csv(root / "findings.csv", rows, GENERIC_COLUMNS)
    return root
