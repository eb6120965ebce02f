"""ProstateX DICOM reader: finding ``pos`` checked against the DICOM formula computed by hand."""

import numpy as np
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.cache import load_index
from fedprostate.data.crops import CropSpec, crop_at
from fedprostate.data.formats.registry import list_studies, load_study
from fedprostate.data.prepare import prepare
from fedprostate.data.preprocess import fit_normalization
from mri_fixtures import (
    CENTRE,
    PROSTATEX_COLUMNS,
    Grid,
    Phantom,
    marker_centroid,
    prostatex_rows,
    rotation,
    write_csv,
    write_dicom_series,
    write_prostatex,
    write_prostatex_study,
)

MARKER_VOXEL = (31, 22, 6)  # (column i, row j, slice k) of the T2 series


def tags(path):
    """Raw DICOM tag strings of one file (no SimpleITK geometry involved)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {k: reader.GetMetaData(k) for k in ("0020|0032", "0020|0037", "0028|0030")}


def dicom_patient_position(t, i, j):
    """PS3.3 C.7.6.2.1.1: P = IPP + i·Δc·X + j·Δr·Y, X = row cosine, Y = column cosine,
    PixelSpacing = (Δr between rows, Δc between columns), i = column, j = row."""
    ipp = np.array([float(v) for v in t["0020|0032"].split("\\")])
    iop = np.array([float(v) for v in t["0020|0037"].split("\\")])
    d_row, d_col = (float(v) for v in t["0028|0030"].split("\\"))
    row_cos, col_cos = iop[:3], iop[3:]
    return ipp + i * d_col * row_cos + j * d_row * col_cos


def build(tmp_path):
    t2_grid = Grid((50, 60, 10), (0.8, 0.6, 3.0), rotation(0.25, 0.1, -0.2))
    p = Phantom(
        "ProstateX-0007",
        "s",
        site="Radboud",
        t2_grid=t2_grid,
        dwi_grid=Grid(
            (28, 30, 10), (2.0, 1.8, 3.0), rotation(0.2, 0.1, -0.25), shift=(0.4, -0.3, 0.7)
        ),
    )
    images = p.images()
    t2 = sitk.GetArrayFromImage(images["t2w"])
    i, j, k = MARKER_VOXEL
    t2[k, j - 1 : j + 2, i - 1 : i + 2] = 4000  # 3x3 marker in index space
    marked = sitk.GetImageFromArray(t2)
    marked.CopyInformation(images["t2w"])
    probe = tmp_path / "probe"
    files = write_dicom_series(probe, marked, "t2_tse_tra", "Radboud", p.patient_id, "1.2.3")
    pos = dicom_patient_position(tags(files[k]), i, j)
    # ADC / DWI get the marker at the hand-computed world point on their own grids
    p.marker = tuple(pos)
    images = {**p.images(), "t2w": marked}
    root = tmp_path / "prostatex"
    write_prostatex_study(root, p, images)
    p.lesions = [(tuple(pos), 4.0, 3)]
    p.benign = [(tuple(CENTRE + np.array([-6.0, 5.0, 3.0])), "TZ")]
    write_csv(root / "ProstateX-Findings-Train.csv", prostatex_rows(p), PROSTATEX_COLUMNS)
    return root, pos


def test_pos_maps_to_the_marked_voxel_and_crop_centre(tmp_path):
    root, pos = build(tmp_path)
    fmt, refs, errors = list_studies(root)
    assert fmt == "prostatex" and not errors and len(refs) == 1
    study = load_study(refs[0])
    assert study.site == "Radboud"  # InstitutionName
    t2 = study.images["t2w"]
    # the reader's geometry agrees with the hand formula (an LPS/RAS flip would break this)
    assert t2.TransformPhysicalPointToIndex(tuple(pos)) == MARKER_VOXEL
    finding = study.findings[0]
    np.testing.assert_allclose(finding.world_mm, pos, atol=1e-3)
    assert finding.clinsig and finding.source == "reader"
    crop = crop_at(
        study, fit_normalization(study), finding.world_mm, CropSpec(crop=32, spacing=0.5)
    )
    for channel in range(3):
        centroid = marker_centroid(crop[channel])
        assert np.abs(centroid - 16).max() <= 1.0, (channel, centroid)
    # a biopsied benign finding is a real negative
    benign = study.findings[1]
    assert benign.source == "reader" and not benign.clinsig and benign.zone == "TZ"


def test_prepare_prostatex_keeps_benign_biopsies_as_negatives(tmp_path):
    phantoms = [
        Phantom(
            f"ProstateX-000{k}",
            "s",
            site="SiteX",
            seed=k,
            lesions=[(tuple(CENTRE + 2 * k), 4.0, 2 + k % 2)] if k % 2 == 0 else [],
            benign=[(tuple(CENTRE - 4), "PZ")],
        )
        for k in range(3)
    ]
    root = write_prostatex(tmp_path / "px", phantoms)
    report = prepare(root, tmp_path / "cache", crop=16, spacing=1.0, progress=False)
    assert report.rejected == 0 and report.kept == 3
    rows = load_index(tmp_path / "cache")
    assert {r["source"] for r in rows} == {"reader"}
    assert sum(r["label"] for r in rows) == 2 and len(rows) == 5
    assert {r["site"] for r in rows} == {"SiteX"}
