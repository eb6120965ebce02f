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


def test_reader_findings_come_from_the_table_and_keep_pirads_and_biopsy(tmp_path):
    p = two_lesion_phantom()
    root = write_picai(tmp_path / "raw", [p])
    fmt, refs, errors = list_studies(root)
    assert fmt == "picai" and not errors and refs[0].site == "siteZ"
    study = load_study(refs[0], seed=3, negatives=4)
    marks = [f for f in study.findings if f.source == "reader"]
    assert [(f.finding_id, f.isup, f.pirads, f.clinsig) for f in marks] == [
        ("M1", 3, 5, True), ("M2", 5, 5, True)
    ]  # fmt: skip
    for f, (world, _, _) in zip(marks, p.lesions, strict=True):
        assert np.linalg.norm(np.subtract(f.world_mm, world)) < 0.01  # placed by the reader
    assert study.case_label == 1 and study.clinical["psad"] == 0.15


def test_the_mask_labels_findings_without_a_biopsy_but_never_places_one(tmp_path):
    p = two_lesion_phantom()
    p.benign = [(tuple(CENTRE + np.array([0.0, -8.0, 0.0])), "benign")]
    root = write_picai(tmp_path / "raw", [p])
    table = root / "radiology" / "findings.csv"
    text = table.read_text(encoding="utf-8").splitlines()
    # drop the biopsy outcome: the mask must label each mark by overlap
    table.write_text(
        "\n".join(line.rsplit(",", 1)[0] + "," for line in text) + "\n", encoding="utf-8"
    )
    study = load_study(list_studies(root)[1][0], negatives=0)
    assert [(f.finding_id, f.isup, f.clinsig) for f in study.findings] == [
        ("M1", 3, True), ("M2", 5, True), ("M3", 0, False)
    ]  # fmt: skip
    # no table: the label-free proposals, never a mask component
    table.unlink()
    ref = list_studies(root)[1][0]
    assert ref.finding_source == "proposal"
    proposals = load_study(ref, negatives=0).findings
    assert proposals and all(f.source == "proposal" for f in proposals)
    for world, _, isup in p.lesions:  # each restricted lesion is proposed and labelled by overlap
        near = [f for f in proposals if np.linalg.norm(np.subtract(f.world_mm, world)) < 3.0]
        assert near and near[0].isup == isup


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
    ref = list_studies(root, labels="AI/Bosma22a", findings="proposals")[1][0]
    found = [f for f in load_study(ref).findings if f.source == "proposal" and f.clinsig]
    assert len(found) == 2 and all(f.isup == 1 for f in found)  # AI masks: 1 = csPCa


def test_case_level_only_positive_excluded_from_lesion_kept_for_organ(tmp_path):
    phantoms = picai_phantoms(4)
    phantoms[0].case_level_only = True  # positive, mask written empty
    root = write_picai(tmp_path / "raw", phantoms, reader_table=False)  # proposals need the mask
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
    # with the radiologist's table (biopsy outcomes) the same case is kept in lesion mode
    root = write_picai(tmp_path / "raw2", phantoms)
    kept = prepare(root, tmp_path / "lesion2", crop=16, spacing=1.0, progress=False)
    assert kept.kept == 4 and kept.rejected == 0
