"""Bad input: each problem rejects only its study, with a reason naming file and patient."""

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.cache import load_index, load_rejected
from fedprostate.data.formats.base import DataFormatError
from fedprostate.data.prepare import prepare
from fedprostate.data.study import StudyError
from mri_fixtures import CENTRE, Phantom, picai_phantoms, write_generic, write_picai

GOOD = {"10000", "10002", "10003", "10004"}  # patient 10001 is the one made bad
BAD_KEY = "10001_1000001"


def image(root, seq):
    return root / "images" / "10001" / f"{BAD_KEY}_{seq}.mha"


def truncate(root):
    path = image(root, "t2w")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def missing_sequence(root):
    image(root, "hbv").unlink()


def nan_voxels(root):
    img = sitk.Cast(sitk.ReadImage(str(image(root, "adc"))), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img)
    arr[3, 10, 10], arr[4, 11, 11] = np.nan, np.inf
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(image(root, "adc")))


def label_out_of_range(root):
    path = root / "labels/csPCa_lesion_delineations/human_expert/resampled" / f"{BAD_KEY}.nii.gz"
    mask = sitk.ReadImage(str(path))
    mask[10, 10, 5] = 7
    sitk.WriteImage(mask, str(path))


def edit_marksheet(root, fn):
    sheet = root / "labels/clinical_information/marksheet.csv"
    lines = sheet.read_text(encoding="utf-8").splitlines()
    sheet.write_text("\n".join(fn(lines)) + "\n", encoding="utf-8")


def mask_contradicts_case(root):  # patient 10001's mask gets a lesion, marksheet still says NO
    path = root / "labels/csPCa_lesion_delineations/human_expert/resampled" / f"{BAD_KEY}.nii.gz"
    lesion = Phantom("10001", "1000001", lesions=[(tuple(CENTRE), 4.0, 3)]).lesion_mask()
    sitk.WriteImage(lesion, str(path))


def duplicated_id(root):
    edit_marksheet(root, lambda ls: [*ls, next(x for x in ls if x.startswith("10001,"))])


def row_without_images(root):
    edit_marksheet(root, lambda ls: [*ls, ls[1].replace("10000,1000000", "19999,1999999")])


def ragged_row(root):
    edit_marksheet(
        root, lambda ls: [ls[0], *[x + ",extra" if x.startswith("10001,") else x for x in ls[1:]]]
    )


CASES = {
    "corrupt": (truncate, "10001", "corrupt or truncated t2w image", 4),
    "missing": (missing_sequence, "10001", "missing hbv image", 4),
    "nan": (nan_voxels, "10001", "NaN/Inf voxels", 4),
    "labels": (label_out_of_range, "10001", "outside 0-5", 4),
    "contradiction": (mask_contradicts_case, "10001", "but case_csPCa=NO", 4),
    "duplicate": (duplicated_id, "10001", "duplicated ID", 5),
    "no_images": (row_without_images, "19999", "has no images", 5),
    "ragged": (ragged_row, "10001", "wrong number of fields", 4),
}


def run(tmp_path, break_fn, strict=False):
    root = write_picai(tmp_path / "raw", picai_phantoms(5))
    break_fn(root)
    return prepare(root, tmp_path / "cache", crop=16, spacing=1.0, progress=False, strict=strict)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_study_is_rejected_and_good_ones_kept(tmp_path, case):
    break_fn, patient, reason, kept = CASES[case]
    report = run(tmp_path, break_fn)
    assert report.rejected == 1 and report.kept == kept, report.reasons
    rejected = load_rejected(tmp_path / "cache")
    assert len(rejected) == 1 and rejected[0]["patient_id"] == patient
    assert reason in rejected[0]["reason"] and rejected[0]["path"]
    message = report.reasons[0]
    assert "\n" not in message and patient in message and rejected[0]["path"] in message
    kept_patients = {r["patient_id"] for r in load_index(tmp_path / "cache")}
    assert GOOD <= kept_patients and (patient not in kept_patients or case == "duplicate")


def test_finding_outside_volume(tmp_path):
    inside = Phantom("g1", "s1", lesions=[(tuple(CENTRE), 4.0, 3)])
    outside = Phantom("g2", "s2", seed=1, lesions=[(tuple(CENTRE + np.array([0, 0, 200.0])), 4, 3)])
    root = write_generic(tmp_path / "gen", [inside, outside])
    report = prepare(root, tmp_path / "cache", crop=16, spacing=1.0, progress=False)
    assert report.kept == 1 and report.rejected == 1
    rejected = load_rejected(tmp_path / "cache")[0]
    assert rejected["patient_id"] == "g2" and "outside the T2 volume" in rejected["reason"]


def test_wrong_csv_columns_is_one_clear_error(tmp_path):
    root = write_picai(tmp_path / "raw", picai_phantoms(2))
    edit_marksheet(root, lambda ls: [ls[0].replace("case_csPCa", "csPCa"), *ls[1:]])
    with pytest.raises(DataFormatError, match=r"marksheet\.csv: wrong CSV columns.*case_csPCa"):
        prepare(root, tmp_path / "cache", progress=False)


def test_strict_stops_at_the_first_bad_study(tmp_path):
    def two_bad(root):
        missing_sequence(root)
        label_out_of_range_other(root)

    def label_out_of_range_other(root):
        path = (
            root
            / "labels/csPCa_lesion_delineations/human_expert/resampled"
            / "10003_1000003.nii.gz"
        )
        mask = sitk.ReadImage(str(path))
        mask[10, 10, 5] = 9
        sitk.WriteImage(mask, str(path))

    with pytest.raises(StudyError, match="10001.*missing hbv"):
        run(tmp_path, two_bad, strict=True)
    assert len(load_rejected(tmp_path / "cache")) == 1
    assert not (tmp_path / "cache" / "index.csv").exists()
    lenient = run(tmp_path / "again", two_bad)
    assert lenient.rejected == 2 and lenient.kept == 3
