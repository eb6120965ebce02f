"""Prostate158 and generic readers, and cross-collection duplicate detection."""

import shutil

import numpy as np

from fedprostate.data.cache import load_index, load_rejected
from fedprostate.data.dedup import fingerprint
from fedprostate.data.formats.registry import detect_format, list_studies, load_study
from fedprostate.data.prepare import prepare
from mri_fixtures import (
    CENTRE,
    Phantom,
    picai_phantoms,
    write_generic,
    write_picai,
    write_prostate158,
)


def test_prostate158_proposals_labelled_by_the_tumour_mask_zone_and_gland(tmp_path):
    lesion = (tuple(CENTRE + np.array([5.0, -3.0, 0.0])), 4.0, 2)
    root = write_prostate158(
        tmp_path / "p158", [Phantom("020", "020", lesions=[lesion]), Phantom("021", "021", seed=1)]
    )
    fmt, refs, errors = list_studies(root)
    assert fmt == "prostate158" and len(refs) == 2 and not errors
    study = load_study(refs[0], negatives=2)
    tumours = [f for f in study.findings if f.source == "proposal" and f.clinsig]
    assert len(tumours) == 1 and tumours[0].zone == "PZ"  # proposed, labelled by the mask
    assert np.linalg.norm(np.subtract(tumours[0].world_mm, lesion[0])) < 3.0
    assert study.case_label == 1 and study.gland_mask is not None
    assert load_study(refs[1]).case_label == 0


def test_generic_csv_schema(tmp_path):
    lesion = (tuple(CENTRE + np.array([2.0, 2.0, 0.0])), 4.0, 4)
    benign = (tuple(CENTRE - 5.0), "TZ")
    phantoms = [
        Phantom("g1", "s1", "hospA", lesions=[lesion], benign=[benign]),
        Phantom("g2", "s2", "hospB", benign=[benign], seed=2),
    ]
    root = write_generic(tmp_path / "gen", phantoms)
    assert detect_format(root) == "generic" and detect_format(root / "findings.csv") == "generic"
    report = prepare(
        root / "findings.csv", tmp_path / "cache", crop=16, spacing=1.0, progress=False
    )
    assert report.kept == 2 and report.rejected == 0
    rows = load_index(tmp_path / "cache")
    assert [(r["site"], r["label"], r["isup"], r["zone"]) for r in rows] == [
        ("hospA", 1, 4, "PZ"),
        ("hospA", 0, 0, "TZ"),
        ("hospB", 0, 0, "TZ"),
    ]
    assert rows[0]["adc_mean"] < rows[1]["adc_mean"]  # restricted diffusion in the lesion
    organ = prepare(root, tmp_path / "organ", mode="organ", crop=16, progress=False)
    assert organ.kept == 2


def test_same_images_under_two_ids_are_rejected_as_duplicate(tmp_path):
    phantoms = picai_phantoms(3)
    root = write_picai(tmp_path / "raw", phantoms)
    # the same scan imported a second time under another patient and study ID (other collection)
    src = root / "images" / "10001"
    dst = root / "images" / "20001"
    dst.mkdir()
    for f in src.iterdir():
        shutil.copy(f, dst / f.name.replace("10001_1000001", "20001_2000001"))
    sheet = root / "labels/clinical_information/marksheet.csv"
    lines = sheet.read_text(encoding="utf-8").splitlines()
    copy = [ln for ln in lines if ln.startswith("10001,")][0]
    copy = copy.replace("10001,1000001", "20001,2000001").replace("siteB", "siteC")
    sheet.write_text("\n".join([*lines, copy]) + "\n", encoding="utf-8")
    report = prepare(root, tmp_path / "cache", crop=16, spacing=1.0, progress=False)
    assert report.kept == 3 and report.rejected == 1
    rejected = load_rejected(tmp_path / "cache")[0]
    assert (
        rejected["patient_id"] == "20001"
        and "duplicate of siteB/10001_1000001" in rejected["reason"]
    )
    assert "20001" not in {r["patient_id"] for r in load_index(tmp_path / "cache")}


def test_fingerprint_survives_resaving_but_not_other_content(tmp_path):
    a = Phantom("a", "s").images()["t2w"]
    resaved = a.__class__(a)
    resaved.SetOrigin((0.0, 0.0, 0.0))
    import SimpleITK as sitk  # noqa: N813

    as_float = sitk.Cast(a, sitk.sitkFloat32)
    assert fingerprint(a) == fingerprint(resaved) == fingerprint(as_float)
    assert fingerprint(a) != fingerprint(Phantom("b", "s", seed=1).images()["t2w"])
