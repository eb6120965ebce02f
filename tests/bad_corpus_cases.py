"""The cases of the bad-input corpus (see ``bad_corpus.py``): one ``Case`` per input problem.

To add one, append ``Case(name, format, what, damage, patient, reason=(...))`` to ``CASES``;
``damage(root)`` edits a fresh copy of that format's base dataset (paths below). ``reason=()``
means the study must be kept (a guard against rejecting good data).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

from bad_corpus import Case, rejected_cell_escaped
from corruptions import (
    drop_tag,
    edit_csv,
    edit_image,
    edit_lines,
    get_tag,
    put_byte,
    replace_in_row,
    resample_onto,
    series_files,
    set_b_value,
    set_tag,
    set_voxels,
    shift_origin,
    truncate,
)
from mri_fixtures import CENTRE, Phantom

# ------------------------------------------------------------------ PI-CAI paths
# base: 10000 (csPCa lesion, ADC float 1e-3 mm²/s), 10001 (no lesion), 10002 (csPCa lesion)
LESIONS = Path("labels/csPCa_lesion_delineations/human_expert/resampled")
GLANDS = Path("labels/anatomical_delineations/whole_gland/AI/Bosma22b")
SHEET = Path("labels/clinical_information/marksheet.csv")


def img(pid: str, seq: str) -> Path:
    return Path("images") / pid / f"{pid}_{1000000 + int(pid) - 10000}_{seq}.mha"


def lesion(pid: str) -> Path:
    return LESIONS / f"{pid}_{1000000 + int(pid) - 10000}.nii.gz"


def gland(pid: str) -> Path:
    return GLANDS / f"{pid}_{1000000 + int(pid) - 10000}.nii.gz"


def at(rel: Path, fn, *args, **kwargs):
    """A damage applying ``fn(root / rel, ...)``."""
    return lambda root: fn(root / rel, *args, **kwargs)


def both(*damages):
    return lambda root: [d(root) for d in damages]


def _nan_adc(a):
    a = a.astype(np.float32)
    a[3, 10, 10] = np.nan
    return a


def _label_7(a):
    a[5, 10, 10] = 7
    return a


def _lesion_in(root: Path) -> None:  # 10001 (case_csPCa=NO) gets a lesion
    sitk.WriteImage(
        Phantom("10001", "1000001", lesions=[(tuple(CENTRE), 4.0, 3)]).lesion_mask(),
        str(root / lesion("10001")),
    )


def _mha_b_value(path: Path, b: str) -> None:
    edit_image(path, lambda im: im.SetMetaData("DiffusionBValue", b))


def _onto_adc(root: Path) -> None:
    resample_onto(root / lesion("10000"), sitk.ReadImage(str(root / img("10000", "adc"))))


PICAI = [
    # the table of issue 18
    Case("lesion_mask_shifted_15mm", "picai", "lesion mask shifted 15 mm (its own origin)", at(lesion("10000"), shift_origin, (15.0, 0, 0)), "10000", ("lesion mask grid does not match the T2 grid", "mask: size", "T2: size")),
    Case("lesion_mask_truncated", "picai", "truncated .nii.gz lesion mask", at(lesion("10000"), truncate, 0.8), "10000", ("corrupt or truncated lesion mask",), ("case-level",)),
    Case("adc_not_overlapping", "picai", "ADC not overlapping T2 (origin +200 mm)", at(img("10000", "adc"), shift_origin, (0, 0, 200.0)), "10000", ("adc field of view covers 0% of the gland",)),
    Case("blank_hbv", "picai", "blank high-b DWI", at(img("10001", "hbv"), set_voxels, np.zeros_like), "10001", ("hbv image is blank",)),
    Case("truncated_mha", "picai", "truncated .mha (T2)", at(img("10001", "t2w"), truncate, 0.5), "10001", ("corrupt or truncated t2w image", "pixel data truncated"), ("No such file",)),
    Case("non_utf8_marksheet", "picai", "one non-UTF-8 byte in the marksheet", at(SHEET, put_byte, "10001,", "2020-01-01"), "10001", ("non-UTF-8 byte 0xe9 at byte offset", "data row 2")),
    Case("formula_patient_id", "picai", "patient id `=cmd|' /C calc'!A0`", at(SHEET, replace_in_row, "10001,", "10001", "=cmd|' /C calc'!A0"), "=cmd|' /C calc'!A0", ("patient_id", "not a valid identifier"), replaces="10001", verify=rejected_cell_escaped("=cmd|' /C calc'!A0")),
    Case("path_patient_id", "picai", "patient id `../x`", at(SHEET, replace_in_row, "10001,", "10001", "../x"), "../x", ("patient_id '../x' is not a valid identifier",), replaces="10001"),
    Case("formula_site_id", "picai", "site id `@SUM(1+1)`", at(SHEET, replace_in_row, "10001,", "siteB", "@SUM(1+1)"), "10001", ("site '@SUM(1+1)' is not a valid identifier",)),
    # the cases handled before
    Case("missing_sequence", "picai", "missing hbv file", lambda root: (root / img("10001", "hbv")).unlink(), "10001", ("missing hbv image",)),
    Case("nan_adc", "picai", "NaN in the ADC", at(img("10001", "adc"), set_voxels, _nan_adc), "10001", ("NaN/Inf voxels",)),
    Case("label_7", "picai", "lesion label 7", at(lesion("10000"), set_voxels, _label_7), "10000", ("outside 0-5",)),
    Case("mask_contradicts_case", "picai", "lesion in the mask of a case_csPCa=NO case", _lesion_in, "10001", ("but case_csPCa=NO",)),
    Case("duplicated_id", "picai", "marksheet row repeated", at(SHEET, edit_lines, lambda ls: [*ls, next(x for x in ls if x.startswith("10001,"))]), "10001", ("duplicated ID",), also_kept=True),
    Case("unknown_patient", "picai", "marksheet row without images", at(SHEET, edit_lines, lambda ls: [*ls, ls[1].replace("10000,1000000", "19999,1999999")]), "19999", ("has no images",)),
    Case("ragged_row", "picai", "marksheet row with an extra field", at(SHEET, edit_lines, lambda ls: [x + ",extra" if x.startswith("10001,") else x for x in ls]), "10001", ("wrong number of fields",)),
    Case("case_level_only", "picai_proposals", "csPCa case with an empty lesion mask, no findings table (proposals cannot be labelled)", at(lesion("10000"), set_voxels, np.zeros_like), "10000", ("case-level label only",)),
    Case("case_level_only_biopsied", "picai", "csPCa case with an empty lesion mask, its marks biopsied (table)", at(lesion("10000"), set_voxels, np.zeros_like), "10000"),
    # new checks
    Case("gland_mask_shifted", "picai", "gland mask shifted 15 mm", at(gland("10001"), shift_origin, (0, 15.0, 0)), "10001", ("gland mask grid does not match the T2 grid",)),
    Case("gland_mask_truncated", "picai", "truncated .nii.gz gland mask", at(gland("10002"), truncate, 0.8), "10002", ("corrupt or truncated gland mask",)),
    Case("hbv_misses_gland", "picai", "high-b DWI field of view beside the gland", at(img("10002", "hbv"), shift_origin, (45.0, 0, 0)), "10002", ("hbv field of view covers",)),
    Case("near_constant_t2", "picai", "near-constant T2 (500 ± noise)", at(img("10001", "t2w"), set_voxels, lambda a: (500 + np.random.default_rng(0).normal(0, 0.5, a.shape)).astype(np.int16)), "10001", ("t2w image is near-constant",)),
    Case("constant_adc", "picai", "constant ADC map", at(img("10002", "adc"), set_voxels, lambda a: np.full_like(a, 1500)), "10002", ("adc image is near-constant",)),
    Case("adc_outside_range", "picai", "ADC ×100 (outside the physical range)", at(img("10000", "adc"), set_voxels, lambda a: a * 100), "10000", ("ADC outside the physical range",)),
    Case("low_b_value_mha", "picai", "high-b DWI whose MHA header says b=50", at(img("10001", "hbv"), _mha_b_value, "50"), "10001", ("b=50",)),
    # good data that must stay
    Case("mask_on_adc_grid", "picai", "lesion mask drawn on the ADC grid", _onto_adc, "10000"),
    Case("mask_float_jitter", "picai", "lesion mask origin off by 0.02 mm", at(lesion("10000"), shift_origin, (0.02, -0.02, 0)), "10000"),
    Case("shifted_gland_resample_option", "picai", "gland 1.5 mm off, --resample-masks", at(gland("10001"), shift_origin, (1.5, 0, 0)), "10001", options={"resample_masks": True}),
]  # fmt: skip

# ------------------------------------------------------------------ ProstateX (DICOM)
PX = "ProstateX-0001"
T2, ADC, HBV = "t2_tse_tra", "ep2d_diff_tra_ADC", "ep2d_diff_tra_CALC_BVAL"
FINDINGS = Path("ProstateX-Findings-Train.csv")


def slices(seq: str, fn, *args):
    """A damage applying ``fn(file, ...)`` to every slice of PX's series ``seq``."""
    return lambda root: [fn(f, *args) for f in series_files(root, PX, seq)]


def one_slice(seq: str, k: int, fn, *args):
    return lambda root: fn(series_files(root, PX, seq)[k], *args)


def _duplicate_position(root: Path) -> None:
    files = series_files(root, PX, T2)
    set_tag(files[6], 0x0020, 0x0032, get_tag(files[5], "0020|0032").strip().encode())


def _mixed_b(root: Path) -> None:
    for k, f in enumerate(series_files(root, PX, HBV)):
        set_b_value(f, 50 if k % 2 else 1400)


def _blank_pixels(path: Path) -> None:
    data = path.read_bytes()
    n = int(get_tag(path, "0028|0010")) * int(get_tag(path, "0028|0011")) * 2
    set_tag(path, 0x7FE0, 0x0010, bytes(n))
    assert len(path.read_bytes()) == len(data)


def _px_row(field: str, fn):
    def change(row):
        if row["ProxID"] == PX:
            row[field] = fn(row[field])
        return row

    return at(FINDINGS, edit_csv, change)


PROSTATEX = [
    Case("dicom_adc_no_position", "prostatex", "DICOM ADC without position/orientation tags", slices(ADC, lambda f: (drop_tag(f, 0x20, 0x32), drop_tag(f, 0x20, 0x37))), PX, ("adc DICOM slice lacks a valid ImagePositionPatient",)),
    Case("dicom_t2_no_pixel_spacing", "prostatex", "T2 DICOM without PixelSpacing", slices(T2, drop_tag, 0x28, 0x30), PX, ("t2w DICOM slice lacks a valid PixelSpacing",)),
    Case("dicom_missing_slice", "prostatex", "one missing T2 DICOM slice", one_slice(T2, 5, Path.unlink), PX, ("t2w slice spacing is not uniform", "missing slice")),
    Case("dicom_truncated_slice", "prostatex", "one truncated T2 DICOM slice", one_slice(T2, 5, truncate, 0.5), PX, ("DICOM file(s) in a series folder cannot be read",)),
    Case("dicom_duplicate_position", "prostatex", "two T2 slices at one position", _duplicate_position, PX, ("share the position",)),
    Case("dicom_low_b_value", "prostatex", "high-b series whose header says b=50", slices(HBV, set_b_value, 50), PX, ("hbv header gives b=50",)),
    Case("dicom_mixed_b_values", "prostatex", "high-b series mixing b=50 and b=1400", _mixed_b, PX, ("hbv series mixes b-values [50, 1400]",)),
    Case("dicom_blank_hbv", "prostatex", "blank high-b DICOM series", slices(HBV, _blank_pixels), PX, ("hbv image is blank",)),
    Case("finding_outside_volume", "prostatex", "finding 200 mm outside the volume", _px_row("pos", lambda p: " ".join([*p.split()[:2], str(float(p.split()[2]) + 200)])), PX, ("lies outside the T2 volume",)),
    Case("non_utf8_findings_row", "prostatex", "non-UTF-8 byte in a findings row", at(FINDINGS, put_byte, PX + ",2,", "TZ"), PX, ("non-UTF-8 byte 0xe9", "line 4")),
    Case("path_proxid", "prostatex", "ProxID `../ProstateX-0001`", _px_row("ProxID", lambda p: "../" + p), "../" + PX, ("ProxID '../ProstateX-0001' is not a valid identifier",), replaces=PX),
]  # fmt: skip

# ------------------------------------------------------------------ Prostate158
# base: 020 (tumour, anatomy = all PZ), 021 (no tumour)


def _tumour_on_adc(root: Path) -> None:
    folder = root / "020"
    resample_onto(folder / "t2_tumor_reader1.nii.gz", sitk.ReadImage(str(folder / "adc.nii.gz")))
    (folder / "t2_tumor_reader1.nii.gz").rename(folder / "adc_tumor_reader1.nii.gz")


PROSTATE158 = [
    Case("p158_tumour_mask_shifted", "prostate158", "tumour mask shifted 15 mm", at(Path("020/t2_tumor_reader1.nii.gz"), shift_origin, (0, 0, 15.0)), "020", ("tumour mask grid does not match the T2 grid",)),
    Case("p158_anatomy_truncated", "prostate158", "truncated anatomy mask", at(Path("021/t2_anatomy_reader1.nii.gz"), truncate, 0.8), "021", ("corrupt or truncated anatomy mask",)),
    Case("p158_truncated_dwi", "prostate158", "truncated dwi.nii.gz", at(Path("020/dwi.nii.gz"), truncate, 0.7), "020", ("corrupt or truncated hbv image",)),
    Case("p158_blank_adc", "prostate158", "ADC all zeros", at(Path("021/adc.nii.gz"), set_voxels, np.zeros_like), "021", ("ADC has no positive values",)),
    Case("p158_formula_folder", "prostate158", "study folder named `+021`", lambda root: shutil.move(root / "021", root / "+021"), "+021", ("patient_id '+021' is not a valid identifier",), replaces="021"),
    Case("p158_tumour_on_adc_grid", "prostate158", "tumour mask on the ADC grid (adc_tumor_reader1)", _tumour_on_adc, "020"),
]  # fmt: skip

# ------------------------------------------------------------------ generic CSV
# base: g1 (hospA, csPCa lesion + benign finding), g2 (hospB, benign finding)
GENERIC = Path("findings.csv")


def _g2(field: str, fn):
    def change(row):
        if row["patient_id"] == "g2":
            row[field] = fn(row[field])
        return row

    return at(GENERIC, edit_csv, change)


def _to_corner(root: Path) -> None:
    t2 = sitk.ReadImage(str(root / "g2" / "t2w.nii.gz"))
    x, y, z = t2.TransformIndexToPhysicalPoint((1, 1, 6))

    def change(row):
        if row["patient_id"] == "g2":
            row.update(x=f"{x:.3f}", y=f"{y:.3f}", z=f"{z:.3f}")
        return row

    edit_csv(root / GENERIC, change)


def _coarse_gland(root: Path) -> None:
    gland_path = root / "g1" / "gland.nii.gz"
    coarse = sitk.Image([30, 26, 10], sitk.sitkUInt8)
    coarse.SetSpacing((2.0, 2.0, 3.6))
    coarse.SetOrigin(tuple(CENTRE - np.array([29.0, 25.0, 16.2])))
    resample_onto(gland_path, coarse)


GENERIC_CASES = [
    Case("generic_finding_outside", "generic", "finding 200 mm outside the volume", _g2("z", lambda z: str(float(z) + 200)), "g2", ("lies outside the T2 volume",)),
    Case("generic_crop_out_of_view", "generic", "finding at the T2 corner (crop mostly outside)", _to_corner, "g2", ("crop of finding F1", "outside the t2w field of view")),
    Case("generic_gland_shifted", "generic", "gland mask shifted 15 mm", at(Path("g2/gland.nii.gz"), shift_origin, (15.0, 0, 0)), "g2", ("gland mask grid does not match the T2 grid",)),
    Case("generic_formula_site", "generic", "site `=1+2`", _g2("site", lambda _: "=1+2"), "g2", ("site '=1+2' is not a valid identifier",)),
    Case("generic_non_utf8_row", "generic", "non-UTF-8 byte in a row", at(GENERIC, put_byte, "g2,", "TZ"), "g2", ("non-UTF-8 byte 0xe9",)),
    Case("generic_non_utf8_second_row", "generic", "non-UTF-8 byte in one of a study's two rows", at(GENERIC, put_byte, "g1,", "TZ"), "g1", ("non-UTF-8 byte 0xe9", "(study skipped)")),
    Case("generic_truncated_t2", "generic", "truncated t2w.nii.gz", at(Path("g1/t2w.nii.gz"), truncate, 0.7), "g1", ("corrupt or truncated t2w image",)),
    Case("generic_gland_other_grid_resampled", "generic", "gland on a coarser grid, --resample-masks", _coarse_gland, "g1", options={"resample_masks": True}),
]  # fmt: skip

# ------------------------------------------------------------------ findings tables (issue 13)
# base radiology/findings.csv: 10000 M1 (csPCa, PI-RADS 5), 10001 M1 (benign, PI-RADS 3),
# 10002 M1 (csPCa). A bad row rejects that finding; its study is kept.
TABLE = Path("radiology/findings.csv")


def _mark(pid: str, **changes):
    """A damage changing the mark of ``pid`` in the findings table."""

    def change(row: dict) -> dict:
        if row["patient_id"] == pid:
            for key, value in changes.items():
                row[key] = value(row[key]) if callable(value) else value
        return row

    return at(TABLE, edit_csv, change)


def _append_mark(pid: str, sid: str, fid: str, copy_of: str | None = None):
    def add(root: Path) -> None:
        lines = (root / TABLE).read_text(encoding="utf-8").splitlines()
        src = next(x for x in lines if x.startswith(f"{copy_of or '10001'},"))
        cells = src.split(",")
        cells[0], cells[1], cells[2] = pid, sid, fid
        (root / TABLE).write_text("\n".join([*lines, ",".join(cells)]) + "\n", encoding="utf-8")

    return add


FINDINGS = [
    Case("table_mark_outside_volume", "picai", "findings table: a mark 500 mm outside the volume", _mark("10001", x=lambda v: f"{float(v) + 500:.2f}"), "10001", ("lies outside the T2 volume",), finding="M1"),
    Case("table_mark_outside_gland", "picai", "findings table: a mark 22 mm outside the gland", _mark("10001", x=f"{CENTRE[0] + 26.0:.2f}", y=f"{CENTRE[1]:.2f}", z=f"{CENTRE[2]:.2f}"), "10001", ("outside the gland",), finding="M1"),
    Case("table_mark_duplicated", "picai", "findings table: the same mark twice (another id)", _append_mark("10001", "1000001", "M9"), "10001", ("duplicates an earlier finding",), finding="M9"),
    Case("table_mark_unknown_patient", "picai", "findings table: a mark for a patient not in the dataset", _append_mark("29999", "2999999", "M1"), "29999", ("is not in the dataset",), finding="M1"),
    Case("table_mark_pirads_7", "picai", "findings table: PI-RADS 7", _mark("10001", pirads="7"), "10001", ("pirads='7' outside 1-5",), finding="M1"),
    Case("table_mark_contradicts_case", "picai", "findings table: csPCa biopsy on a case_csPCa=NO case", _mark("10001", isup="3"), "10001", ("labelled csPCa but the case says case_csPCa=NO",), finding="M1"),
]  # fmt: skip

CASES = [*PICAI, *PROSTATEX, *PROSTATE158, *GENERIC_CASES, *FINDINGS]
assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"
