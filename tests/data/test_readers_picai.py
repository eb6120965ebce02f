"""PI-CAI reader: mask components as findings, sampled negatives, label options, case-level-only."""

import shutil

import numpy as np
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.cache import load_index, load_rejected
from fedprostate.data.formats.base import NEGATIVE_MARGIN_MM
from fedprostate.data.formats.registry import detect_format, list_studies, load_study
from fedprostate.data.prepare import prepare
from mri_fixtures import CENTRE, Phantom, picai_phantoms, write_picai


def two_lesion_phantom():
    lesions = [
        (tuple(CENTRE + np.array([-8.0, 0.0, 0.0])), 3.5, 3),
        (tuple(CENTRE + np.array([8.0, 3.0, 3.0])), 4.0, 5),
    ]
    return Phantom("10042", "1000042", "siteZ", lesions=lesions)


def test_findings_are_mask_components_with_world_centroid_and_max_isup(tmp_path):
    p = two_lesion_phantom()
    root = write_picai(tmp_path / "raw", [p])
    fmt, refs, errors = list_studies(root)
    assert fmt == "picai" and not errors and refs[0].site == "siteZ"
    study = load_study(refs[0], seed=3, negatives=4)
    masks = sorted((f for f in study.findings if f.source == "mask"), key=lambda f: f.world_mm[0])
    assert [f.isup for f in masks] == [3, 5] and all(f.clinsig for f in masks)
    for f, (world, radius, _) in zip(masks, p.lesions, strict=True):
        assert np.linalg.norm(np.subtract(f.world_mm, world)) < 1.0
        assert abs(f.radius_mm - radius) < 1.0
    assert study.case_label == 1 and study.clinical["psad"] == 0.15


def test_sampled_negatives_inside_gland_away_from_lesions_and_seeded(tmp_path):
    p = two_lesion_phantom()
    root = write_picai(tmp_path / "raw", [p])
    ref = list_studies(root)[1][0]
    study = load_study(ref, seed=3, negatives=6)
    negatives = [f for f in study.findings if f.source == "sampled"]
    assert len(negatives) == 6 and not any(f.clinsig for f in negatives)
    gland = study.gland_mask
    for f in negatives:
        assert gland[gland.TransformPhysicalPointToIndex(f.world_mm)] == 1
        for world, radius, _ in p.lesions:  # centre distance minus radius = distance to lesion
            assert (
                np.linalg.norm(np.subtract(f.world_mm, world)) - radius >= NEGATIVE_MARGIN_MM - 1.5
            )
    again = [f.world_mm for f in load_study(ref, seed=3, negatives=6).findings]
    other = [f.world_mm for f in load_study(ref, seed=4, negatives=6).findings]
    assert again == [f.world_mm for f in study.findings] and other != again


def test_marksheet_at_root_and_ai_label_folder(tmp_path):
    p = two_lesion_phantom()
    root = write_picai(tmp_path / "raw", [p], marksheet_at_root=True)
    assert detect_format(root) == "picai"
    human = root / "labels/csPCa_lesion_delineations/human_expert/resampled"
    ai = root / "labels/csPCa_lesion_delineations/AI/Bosma22a"
    ai.mkdir(parents=True)
    mask = sitk.ReadImage(str(human / "10042_1000042.nii.gz"))
    sitk.WriteImage(sitk.Cast(mask > 0, sitk.sitkUInt8), str(ai / "10042_1000042.nii.gz"))
    shutil.rmtree(human)
    ref = list_studies(root, labels="AI/Bosma22a")[1][0]
    masks = [f for f in load_study(ref).findings if f.source == "mask"]
    assert len(masks) == 2 and all(f.isup == 1 and f.clinsig for f in masks)  # AI: 1 = csPCa


def test_case_level_only_positive_excluded_from_lesion_kept_for_organ(tmp_path):
    phantoms = picai_phantoms(4)
    phantoms[0].case_level_only = True  # positive, mask written empty
    root = write_picai(tmp_path / "raw", phantoms)
    lesion = prepare(root, tmp_path / "lesion", crop=16, spacing=1.0, progress=False)
    assert lesion.kept == 3 and lesion.rejected == 1
    rejected = load_rejected(tmp_path / "lesion")
    assert rejected[0]["patient_id"] == "10000"
    assert "excluded from lesion mode" in rejected[0]["reason"]
    organ = prepare(root, tmp_path / "organ", mode="organ", crop=16, progress=False)
    assert organ.kept == 4 and organ.rejected == 0
    rows = load_index(tmp_path / "organ")
    assert {r["label"] for r in rows if r["patient_id"] == "10000"} == {1}
    assert all(r["source"] == "organ" and r["slice"] >= 0 for r in rows)
