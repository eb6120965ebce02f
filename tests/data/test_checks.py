"""The checks behind the bad-input corpus, one by one, at their stated tolerances."""

import os

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.checks import GRID_TOLERANCE_VOX, crop_problem, id_problem, mask_on_t2
from fedprostate.data.crops import CropSpec, study_crops
from fedprostate.data.formats import dicom
from fedprostate.data.formats.base import read_csv_checked, read_image
from fedprostate.data.formats.integrity import native_messages
from fedprostate.data.preprocess import fit_normalization
from fedprostate.data.study import Study, StudyError
from fedprostate.records.csv_cells import safe_cell
from mri_fixtures import Grid, Phantom, write_prostatex


def test_non_utf8_byte_spoils_only_its_row_and_is_named_by_offset(tmp_path):
    path = tmp_path / "t.csv"
    raw = b'\xef\xbb\xbfid,note\n1,"two\nlines"\n2,caf\xe9\n3,ok\n'
    path.write_bytes(raw)
    rows = read_csv_checked(path, ["id", "note"])
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert [r["_line"] for r in rows] == ["2", "4", "5"]  # a quoted newline spans line 3
    assert rows[0]["_error"] == rows[2]["_error"] == "" and not rows[2]["_ragged"]
    error = rows[1]["_error"]
    assert "0xe9" in error and "line 4" in error and "data row 2" in error and rows[1]["_ragged"]
    offset = int(error.split("byte offset ")[1].split()[0])
    assert raw[offset] == 0xE9  # the offset points at the byte itself (BOM counted)


def test_formula_cells_are_escaped_numbers_are_not():
    assert safe_cell("=cmd|' /C calc'!A0") == "'=cmd|' /C calc'!A0"
    assert [safe_cell(v) for v in ("+1+2", "@SUM(A1)", "-x", "\tx")] == [
        "'+1+2",
        "'@SUM(A1)",
        "'-x",
        "'\tx",
    ]
    assert [safe_cell(v) for v in ("-1.5", "-3e-4", "10001", "", 7)] == [
        "-1.5",
        "-3e-4",
        "10001",
        "",
        7,
    ]


@pytest.mark.parametrize(
    "value", ["10000", "ProstateX-0000", "eu_nijmegen", "Radboud UMC", "Zürich", "a.b", "_x"]
)
def test_valid_ids(value):
    assert id_problem("patient_id", value) is None


@pytest.mark.parametrize(
    "value", ["=x", "+x", "-x", "@x", "../x", "a/b", "a\\b", "", " x", "x ", "a\nb", "x" * 65]
)
def test_invalid_ids(value):
    assert "not a valid identifier" in id_problem("site", value)


def _grid_image(shift_vox: float) -> tuple[sitk.Image, sitk.Image]:
    t2 = Grid((20, 20, 6), (0.5, 0.5, 3.0)).image(np.zeros((6, 20, 20), np.int16))
    mask = sitk.Image(t2.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(t2)
    mask.SetOrigin(tuple(np.add(t2.GetOrigin(), (shift_vox * 0.5, 0, 0))))
    mask[10, 10, 3] = 1
    return mask, t2


def test_mask_grid_tolerance_is_a_tenth_of_a_voxel():
    mask, t2 = _grid_image(0.8 * GRID_TOLERANCE_VOX)
    out = mask_on_t2(mask, t2, "p", "m.nii.gz", "lesion mask")
    assert out.GetOrigin() == t2.GetOrigin() and out[10, 10, 3] == 1  # geometry copied
    mask, t2 = _grid_image(1.5 * GRID_TOLERANCE_VOX)
    with pytest.raises(StudyError, match=r"lesion mask grid does not match.*mask: size.*T2: size"):
        mask_on_t2(mask, t2, "p", "m.nii.gz", "lesion mask")
    resampled = mask_on_t2(mask, t2, "p", "m.nii.gz", "lesion mask", resample=True)
    assert resampled.GetOrigin() == t2.GetOrigin()


def test_crop_problem_out_of_view_share_and_constant():
    plane = np.random.default_rng(0).normal(size=(1, 10, 10))
    assert crop_problem(plane, "adc") is None
    plane[:, :, :5] = np.nan  # exactly half outside: allowed
    assert crop_problem(plane, "adc") is None
    plane[:, 0, 5] = np.nan
    assert "51% of the adc crop lies outside" in crop_problem(plane, "adc")
    assert "constant" in crop_problem(np.full((1, 4, 4), 3.0), "hbv")


def test_native_messages_collects_what_libraries_print():
    with native_messages() as messages:
        os.write(2, b"WARNING: In /x/itkFoo.hxx, line 3\nFoo (0x55aa): something odd\n")
    assert messages == ["Foo: something odd"]


def test_a_reader_warning_is_a_study_error(tmp_path, monkeypatch):
    path = tmp_path / "x_hbv.mha"
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkInt16), str(path))
    real = sitk.ReadImage

    def noisy(*args, **kwargs):
        os.write(2, b"NIFTI: qform and sform disagree\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(sitk, "ReadImage", noisy)
    with pytest.raises(StudyError, match="reported 'NIFTI: qform and sform disagree'"):
        read_image(path, "p", "hbv")


def test_an_itk_series_warning_is_a_study_error_even_past_the_slice_checks(tmp_path, monkeypatch):
    """The ITK warning of a gapped series is an error by itself (slice checks switched off)."""
    root = write_prostatex(tmp_path / "px", [Phantom("P1", "s")])
    study = next((root / "P1").iterdir())
    series, _ = dicom.find_series(study, "P1")
    os.unlink(series["t2w"][5])
    series, _ = dicom.find_series(study, "P1")
    monkeypatch.setattr(dicom, "check_slices", lambda *a: None)
    with pytest.raises(StudyError, match="reported 'ImageSeriesReader: Non uniform sampling"):
        dicom.read_series(series["t2w"], "P1", "t2w")


def test_slices_beyond_the_dwi_slab_are_dropped_not_zero_filled():
    """Organ mode: gland slices the ADC/DWI slab does not reach give no crop (the study stays);
    without any covered slice the study is rejected."""
    short = Grid((30, 30, 5), (2.0, 2.0, 3.0))  # 15 mm slab: the gland spans 32 mm
    p = Phantom("p1", "s1", dwi_grid=short)
    study = Study("siteA", "p1", "s1", p.images(), gland_mask=p.gland_mask(), case_label=0)
    spec = CropSpec(mode="organ", crop=16)
    dropped: list[str] = []
    crops = study_crops(study, fit_normalization(study), spec, dropped)
    gland_slices = int(np.any(sitk.GetArrayViewFromImage(study.gland_mask), axis=(1, 2)).sum())
    assert 0 < len(crops) < gland_slices and len(crops) + len(dropped) == gland_slices
    assert all("outside the adc field of view" in d for d in dropped)
    for c in crops:
        assert np.count_nonzero(c.array[1]) > 0.5 * c.array[1].size  # no zero-filled ADC
