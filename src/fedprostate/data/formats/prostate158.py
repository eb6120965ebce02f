"""Prostate158 reader: ``DIR/<id>/{t2,adc,dwi}.nii.gz`` with tumour masks ``t2_tumor_reader1.nii.gz``
(on the T2 grid; ``adc_tumor_reader1.nii.gz`` on the ADC grid is used when the T2 one is absent)
and zonal anatomy ``t2_anatomy_reader1.nii.gz`` (1 = TZ, 2 = PZ; their union is the gland).
Prostate158 has no findings table: findings are the label-free candidates of ``data/proposals``
(``source="proposal"``), labelled by the tumour mask (binary, 1 = csPCa, so as with AI masks
``isup=1`` is kept and the finding counts as csPCa). The zone is read from the anatomy mask at the
finding. Case label = any tumour voxel. Negatives are sampled as for PI-CAI.
Site = ``prostate158``, patient_id = study_id = the folder name (a folder whose name is not a valid
identifier is rejected at listing). Masks must lie on the T2 grid (or the ADC grid), see
``data.checks.mask_on_t2``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import SimpleITK as sitk  # noqa: N813

from fedprostate.data.checks import id_problem, mask_on_t2
from fedprostate.data.formats.base import (
    StudyRef,
    check_label_values,
    label_from_mask,
    read_image,
    sample_negatives,
    study_rng,
)
from fedprostate.data.proposals import propose
from fedprostate.data.study import SEQUENCES, Finding, Study, StudyError

P158_FILES = {"t2w": "t2.nii.gz", "adc": "adc.nii.gz", "hbv": "dwi.nii.gz"}
P158_ZONES = {1: "TZ", 2: "PZ"}


NAME = "prostate158"


def detect(src: Path) -> bool:
    return src.is_dir() and any(src.glob("*/t2.nii.gz"))


def list_refs(src: Path, findings: str = "auto", **_) -> tuple[list[StudyRef], list[StudyError]]:
    refs, errors = [], []
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        if not any((folder / name).exists() for name in P158_FILES.values()):
            continue
        if problem := id_problem("patient_id", folder.name):  # the folder name is the id
            errors.append(StudyError(folder.name, problem, folder))
            continue
        paths = {seq: str(folder / name) for seq, name in P158_FILES.items()}
        for name in ("t2_tumor_reader1", "adc_tumor_reader1", "t2_anatomy_reader1"):
            paths[name] = str(folder / f"{name}.nii.gz")
        refs.append(StudyRef("prostate158", "prostate158", folder.name, folder.name, paths,
                             finding_source="none" if findings == "none" else "proposal"))  # fmt: skip
    return refs, errors


def load(
    ref: StudyRef, seed: int = 0, negatives: int = 2, resample_masks: bool = False, **_
) -> Study:
    pid = ref.patient_id
    images = {seq: read_image(ref.paths[seq], pid, seq) for seq in SEQUENCES}
    t2 = images["t2w"]
    also = {"adc": images["adc"]}
    lesion = None
    for name in ("t2_tumor_reader1", "adc_tumor_reader1"):
        if Path(ref.paths[name]).exists():
            mask = read_image(ref.paths[name], pid, "tumour mask")
            check_label_values(mask, pid, ref.paths[name])
            mask = sitk.Cast(mask, sitk.sitkUInt8)
            lesion = mask_on_t2(mask, t2, pid, ref.paths[name], "tumour mask", also, resample_masks)
            break
    gland = anatomy = None
    if Path(ref.paths["t2_anatomy_reader1"]).exists():
        path = ref.paths["t2_anatomy_reader1"]
        anatomy = sitk.Cast(read_image(path, pid, "anatomy mask"), sitk.sitkUInt8)
        anatomy = mask_on_t2(anatomy, t2, pid, path, "anatomy mask", also, resample_masks)
        gland = sitk.Cast(anatomy > 0, sitk.sitkUInt8)
    case_label = int(lesion is not None and sitk.GetArrayViewFromImage(lesion).any())
    study = Study(ref.site, pid, ref.study_id, images, gland_mask=gland, lesion_mask=lesion,
                  case_label=case_label,
                  source_paths={k: v for k, v in ref.paths.items() if Path(v).exists()})  # fmt: skip
    findings = []
    if ref.finding_source == "proposal":  # no findings table: label-free candidates
        findings = [label_from_mask(f, lesion) if lesion is not None else f for f in propose(study)]
        if anatomy is not None:
            findings = [_with_zone(f, anatomy) for f in findings]
    study.findings = findings + sample_negatives(
        t2, gland, lesion, negatives, study_rng(seed, ref.key)
    )
    return study


def _with_zone(finding: Finding, anatomy: sitk.Image) -> Finding:
    idx = anatomy.TransformPhysicalPointToIndex(finding.world_mm)
    size = anatomy.GetSize()
    value = anatomy[idx] if all(0 <= i < s for i, s in zip(idx, size, strict=True)) else 0
    return dataclasses.replace(finding, zone=P158_ZONES.get(int(value), "unknown"))
