"""The synthetic federation is written in the real PI-CAI / ProstateX layouts with correct geometry."""

import csv
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the library's own convention)

from fedprostate.data.synth.exam import generate_study
from fedprostate.data.synth.federation import plan_site, synthesize
from fedprostate.data.synth.sites import make_site_profiles
from fedprostate.data.synth.writers import MARKSHEET_COLUMNS, write_prostatex_study

LESION_DIR = "labels/csPCa_lesion_delineations/human_expert/resampled"
GLAND_DIR = "labels/anatomical_delineations/whole_gland/AI/Bosma22b"


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def picai(tmp_path_factory):
    out = tmp_path_factory.mktemp("picai")
    report = synthesize(out, sites=3, patients=24, seed=0, preset="small", unlabeled=2)
    return out, report


def test_picai_files_and_marksheet(picai):
    out, report = picai
    with (out / "labels/clinical_information/marksheet.csv").open(encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
    assert header == MARKSHEET_COLUMNS
    rows = _rows(out / "labels/clinical_information/marksheet.csv")
    assert len(rows) == 24 == report.n_studies
    assert {r["center"] for r in rows} == {"eu_nijmegen", "na_boston", "asia_tokyo"}
    for r in rows:
        pid, sid = r["patient_id"], r["study_id"]
        assert pid.isdigit() and sid.isdigit()
        for seq in ("t2w", "adc", "hbv"):
            assert (out / "images" / pid / f"{pid}_{sid}_{seq}.mha").is_file()
        assert (out / LESION_DIR / f"{pid}_{sid}.nii.gz").is_file()
        assert (out / GLAND_DIR / f"{pid}_{sid}.nii.gz").is_file()
        isups = [int(v) for v in r["lesion_ISUP"].split(",")] if r["lesion_ISUP"] else []
        assert len(isups) == len(r["lesion_GS"].split(",")) if isups else r["lesion_GS"] == ""
        assert r["case_csPCa"] == ("YES" if max(isups, default=0) >= 2 else "NO")
    findings = _rows(out / "truth/findings.csv")
    lesions = [f for f in findings if f["kind"] != "normal"]
    assert all(0 <= int(f["isup"]) <= 5 and f["zone"] in ("PZ", "TZ", "AS") for f in lesions)
    # Diameters 4-25 mm, each semi-axis jittered by +-20 % (prostatitis: band-like, x1.5).
    assert all(4 * 0.8 <= 2 * float(f["radius_mm"]) <= 25 * 1.2 * 1.5 for f in lesions)
    # The site's radiology table: exactly the marked truth rows, with PI-RADS >= 3 and the
    # biopsy outcome; the table never holds a lesion nobody marked.
    marks = _rows(out / "radiology/findings.csv")
    marked = {(f["patient_id"], f["mark_id"]): f for f in findings if f["mark_id"]}
    assert marks and len(marks) == len(marked)
    for m in marks:
        truth = marked[(m["patient_id"], m["finding_id"])]
        assert int(m["pirads"]) >= 3 and m["isup"] == truth["isup"]
        assert [m[c] for c in "xyz"] == [truth[c] for c in "xyz"]
    assert any(not f["mark_id"] and f["clinsig"] == "1" for f in findings) or len(findings) < 30
    # Unlabeled pool: images only, ids disjoint from every site.
    unl = sorted((out / "unlabeled/images").iterdir())
    assert len(unl) == 2
    assert not {p.name for p in unl} & {r["patient_id"] for r in rows}
    assert not (out / "unlabeled/labels").exists()


def test_masks_on_t2_grid(picai):
    out, _ = picai
    findings = _rows(out / "truth/findings.csv")
    hits = total = 0
    for r in _rows(out / "labels/clinical_information/marksheet.csv"):
        key = f"{r['patient_id']}_{r['study_id']}"
        t2 = sitk.ReadImage(str(out / "images" / r["patient_id"] / f"{key}_t2w.mha"))
        for folder, allowed in ((LESION_DIR, {0, 2, 3, 4, 5}), (GLAND_DIR, {0, 1})):
            mask = sitk.ReadImage(str(out / folder / f"{key}.nii.gz"))
            assert mask.GetPixelID() == sitk.sitkUInt8
            assert mask.GetSize() == t2.GetSize()
            np.testing.assert_allclose(mask.GetOrigin(), t2.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(mask.GetSpacing(), t2.GetSpacing(), atol=1e-5)
            np.testing.assert_allclose(mask.GetDirection(), t2.GetDirection(), atol=1e-5)
            assert set(np.unique(sitk.GetArrayViewFromImage(mask)).tolist()) <= allowed
        lesion = sitk.ReadImage(str(out / LESION_DIR / f"{key}.nii.gz"))
        for f in findings:
            if f["patient_id"] == r["patient_id"] and f["in_mask"] == "1":
                idx = lesion.TransformPhysicalPointToIndex([float(f[c]) for c in "xyz"])
                total += 1
                hits += lesion[idx] >= 2
    assert total > 0 and hits / total >= 0.8


def test_adc_storage_follows_site_units(picai):
    out, _ = picai
    units = {s["site"]: s["adc_units"] for s in _rows(out / "truth/sites.csv")}
    assert set(units.values()) == {"1e-6 mm2/s", "1e-3 mm2/s"}
    for r in _rows(out / "labels/clinical_information/marksheet.csv")[::4]:
        key = f"{r['patient_id']}_{r['study_id']}"
        adc = sitk.ReadImage(str(out / "images" / r["patient_id"] / f"{key}_adc.mha"))
        arr = sitk.GetArrayViewFromImage(adc)
        if units[r["center"]].startswith("1e-3"):
            assert (
                adc.GetPixelID() == sitk.sitkFloat32 and 0.3 < np.percentile(arr[arr > 0], 50) < 3
            )
        else:
            assert (
                adc.GetPixelID() == sitk.sitkInt16 and 300 < np.percentile(arr[arr > 0], 50) < 3000
            )


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = synthesize(tmp_path / "a", sites=2, patients=4, seed=3, preset="small").out
    b = synthesize(tmp_path / "b", sites=2, patients=4, seed=3, preset="small", workers=2).out
    c = synthesize(tmp_path / "c", sites=2, patients=4, seed=4, preset="small").out
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db
    t2 = [k for k in da if k.endswith("_t2w.mha")]
    assert t2 and all(da[k] != dc.get(k) for k in t2)


def test_each_sequence_on_its_own_grid_and_oblique_planning():
    prof = dataclasses.replace(make_site_profiles(17, 2040)[0], oblique_fraction=1.0)
    st = generate_study(prof, np.random.default_rng(1), True, "1", "2")
    t2, adc, hbv = st.images["t2w"], st.images["adc"], st.images["hbv"]
    assert 0.3 <= t2.GetSpacing()[0] <= 0.8 and 3.0 <= t2.GetSpacing()[2] <= 4.0
    assert 1.5 <= adc.GetSpacing()[0] <= 2.5 and adc.GetSize() == hbv.GetSize()
    assert np.linalg.norm(np.subtract(t2.GetOrigin(), adc.GetOrigin())) > 0.1
    d = np.array(t2.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(d @ d.T, np.eye(3), atol=1e-6)
    assert not np.allclose(d, np.eye(3), atol=1e-3)
    fov = np.array(t2.GetSize()[:2]) * t2.GetSpacing()[0]
    assert np.all((fov > 85) & (fov < 115))


def test_prostatex_dicom_geometry_roundtrip(tmp_path):
    prof = dataclasses.replace(make_site_profiles(17, 2040)[2], oblique_fraction=1.0)
    st = generate_study(prof, np.random.default_rng(5), True, "ProstateX-0007", "1000007")
    study_dir = write_prostatex_study(tmp_path, st, "ProstateX-0007", 0, prof)
    reader = sitk.ImageSeriesReader()
    for seq, desc in (
        ("t2w", "t2_tse_tra"),
        ("adc", "ep2d_diff_tra_ADC"),
        ("hbv", "ep2d_diff_tra_CALC_BVAL"),
    ):
        (folder,) = list(study_dir.glob(f"*-{desc}"))
        names = reader.GetGDCMSeriesFileNames(str(folder))
        assert [Path(n).name for n in names][:2] == ["0001.dcm", "0002.dcm"]
        reader.SetFileNames(names)
        img = reader.Execute()
        want = st.images[seq]
        np.testing.assert_allclose(img.GetOrigin(), want.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(img.GetSpacing(), want.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(img.GetDirection(), want.GetDirection(), atol=1e-5)
        arr = sitk.GetArrayFromImage(want)
        if seq == "adc":  # this site stores float 1e-3; ProstateX DICOM stores integer 1e-6
            arr = np.round(arr * 1000.0)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arr.astype(np.int16))
        r = sitk.ImageFileReader()
        r.SetFileName(names[0])
        r.ReadImageInformation()
        assert r.GetMetaData("0008|0080").strip() == prof.name
        assert r.GetMetaData("0008|103e").strip() == desc


def test_prostatex_layout_findings_inside_volume(tmp_path):
    out = synthesize(tmp_path, sites=2, patients=6, seed=1, preset="small", layout="prostatex").out
    rows = _rows(out / "ProstateX-Findings-Train.csv")
    assert rows and list(rows[0]) == ["ProxID", "fid", "pos", "zone", "ClinSig", "pirads"]
    assert all(int(r["pirads"]) >= 3 for r in rows)  # the radiologist's marks
    reader = sitk.ImageSeriesReader()
    for r in rows:
        assert r["ProxID"].startswith("ProstateX-") and r["ClinSig"] in ("TRUE", "FALSE")
        (folder,) = list((out / r["ProxID"]).glob("*/*-t2_tse_tra"))
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        t2 = reader.Execute()
        idx = t2.TransformPhysicalPointToContinuousIndex([float(v) for v in r["pos"].split()])
        assert all(0 <= i <= n - 1 for i, n in zip(idx, t2.GetSize(), strict=True))


def test_site_plan_prevalence_and_case_level_only():
    prof = make_site_profiles(17, 2040)[0]
    positive, case_only = plan_site(prof, 0, seed=0)
    assert positive.sum() == round(prof.prevalence * prof.n_patients)
    assert not (case_only & ~positive).any()
    assert 0.02 < case_only.sum() / positive.sum() < 0.16
