"""Geometry-exact crops: a marker at a known world point lands at the crop centre in all channels."""

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.crops import (
    CropSpec,
    adc_mean,
    crop_at,
    organ_box,
    organ_crops,
    study_crops,
)
from fedprostate.data.preprocess import fit_normalization
from fedprostate.data.study import Finding, Study
from mri_fixtures import CENTRE, Grid, Phantom, marker_centroid, rotation


def oblique_study(marker, adc_units="1e-3") -> Study:
    t2_grid = Grid((56, 60, 12), (0.7, 0.9, 3.0), rotation(0.2, -0.15, 0.3))
    # DWI/ADC: other origin, spacing and direction, plus a sub-voxel shift
    dwi_grid = Grid(
        (30, 28, 11), (2.1, 1.9, 3.3), rotation(0.26, -0.08, 0.36), shift=(0.37, -0.61, 0.93)
    )
    p = Phantom(
        "p1", "s1", marker=tuple(marker), t2_grid=t2_grid, dwi_grid=dwi_grid, adc_units=adc_units
    )
    return Study("siteA", "p1", "s1", p.images(), gland_mask=p.gland_mask(), case_label=0)


@pytest.mark.parametrize("offset", [(3.3, -2.1, 1.7), (-5.2, 4.4, -2.9)])
def test_marker_lands_at_crop_centre_in_every_channel(offset):
    marker = CENTRE + np.array(offset)
    study = oblique_study(marker)
    spec = CropSpec(crop=48, spacing=0.5)
    crop = crop_at(study, fit_normalization(study), marker, spec)
    assert crop.shape == (3, 48, 48)
    for channel in range(3):
        centroid = marker_centroid(crop[channel])
        assert np.abs(centroid - 24).max() <= 1.0, (channel, centroid)


def test_marker_off_centre_is_detected_off_centre():
    """The check can fail: a crop centred 3 mm away puts the marker 6 px from the centre."""
    marker = CENTRE + np.array([3.3, -2.1, 1.7])
    study = oblique_study(marker)
    t2_dir = np.asarray(study.images["t2w"].GetDirection()).reshape(3, 3)
    crop = crop_at(
        study, fit_normalization(study), marker + 3.0 * t2_dir[:, 0], CropSpec(crop=48, spacing=0.5)
    )
    for channel in range(3):
        centroid = marker_centroid(crop[channel])
        assert abs(centroid[1] - (24 - 6)) <= 1.0 and abs(centroid[0] - 24) <= 1.0


def test_neighbouring_slices_are_slice_major_and_centre_matches():
    marker = CENTRE + np.array([1.0, 2.0, 0.0])
    study = oblique_study(marker)
    norm = fit_normalization(study)
    one = crop_at(study, norm, marker, CropSpec(crop=32, spacing=0.5))
    three = crop_at(study, norm, marker, CropSpec(crop=32, spacing=0.5, n_slices=3))
    assert three.shape == (9, 32, 32)
    np.testing.assert_allclose(three[3:6], one, atol=1e-5)
    # one T2 slice (3 mm) away the marker (sigma 2 mm) is much fainter
    assert three[0, 16, 16] < three[3, 16, 16] and three[6, 16, 16] < three[3, 16, 16]


def test_adc_mean_in_physical_units_whatever_the_storage():
    lesion = (tuple(CENTRE + np.array([2.0, 1.0, 0.0])), 5.0, 3)
    means = []
    for units in ("1e-3", "1e-6"):
        p = Phantom("p", "s", lesions=[lesion], adc_units=units)
        study = Study("a", "p", "s", p.images(), gland_mask=p.gland_mask())
        means.append(adc_mean(study, fit_normalization(study), lesion[0], 3.0))
    assert 600 < means[0] < 800 and abs(means[0] - means[1]) < 20  # lesion ADC is 700e-6


def test_organ_mode_one_crop_per_gland_slice_labelled_with_case():
    p = Phantom("p", "s", lesions=[(tuple(CENTRE), 4.0, 4)])
    study = Study(
        "a",
        "p",
        "s",
        p.images(),
        findings=[Finding("L1", tuple(CENTRE), isup=4, clinsig=True, source="reader")],
        gland_mask=p.gland_mask(),
        case_label=1,
    )
    crops = organ_crops(study, fit_normalization(study), CropSpec(mode="organ", crop=32))
    gland_slices = np.flatnonzero(sitk.GetArrayFromImage(p.gland_mask()).any(axis=(1, 2)))
    assert [c.slice for c in crops] == gland_slices.tolist()
    assert all(c.label == 1 and c.source == "organ" and c.array.shape == (3, 32, 32) for c in crops)
    middle = crops[len(crops) // 2].array[0]
    # gland (T2 700) around the centre, background (350) in the corners, lesion (300) at the centre
    assert middle[16, 24] > middle[1, 1] + 0.2 and middle[16, 16] < middle[16, 24] - 0.2
    assert 1300 < crops[len(crops) // 2].adc_mean < 1600  # gland ADC 1500e-6


def test_organ_stack_equals_per_slice_planes():
    """The one-resample organ stack gives the same pixels as a plane per slice (crop_at)."""
    p = Phantom("p", "s", t2_grid=Grid((56, 56, 12), (0.8, 0.8, 3.0), rotation(0.2, 0.1, 0.3)))
    study = Study("a", "p", "s", p.images(), gland_mask=p.gland_mask(), case_label=0)
    norm = fit_normalization(study)
    spec = CropSpec(mode="organ", crop=24, n_slices=3)
    crops = organ_crops(study, norm, spec)
    slices, (cx, cy), side = organ_box(study.gland_mask)
    for c in (crops[0], crops[len(crops) // 2]):
        centre = study.gland_mask.TransformContinuousIndexToPhysicalPoint((cx, cy, float(c.slice)))
        expected = crop_at(study, norm, centre, spec, spacing=side / 24)
        np.testing.assert_allclose(c.array, expected, atol=1e-5)


def test_study_crops_lesion_mode_one_per_finding():
    p = Phantom("p", "s")
    findings = [
        Finding("F1", tuple(CENTRE), source="reader"),
        Finding("F2", tuple(CENTRE + 3), isup=3, clinsig=True),
    ]
    study = Study("a", "p", "s", p.images(), findings=findings, case_label=1)
    crops = study_crops(study, fit_normalization(study), CropSpec(crop=16, spacing=1.0))
    assert [(c.finding_id, c.label, c.isup, c.slice) for c in crops] == [
        ("F1", 0, 0, -1),
        ("F2", 1, 3, -1),
    ]
