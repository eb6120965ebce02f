"""Normalization with ADC unit detection, and whole-volume alignment onto the T2 frame."""

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.preprocess import (
    ADC_SCALE,
    aligned_volumes,
    detect_adc_factor,
    fit_normalization,
)
from fedprostate.data.study import Study
from mri_fixtures import CENTRE, Grid, Phantom, rotation


@pytest.mark.parametrize(("units", "factor"), [("1e-6", 1.0), ("1e-3", 1e3)])
def test_adc_unit_detection(units, factor):
    p = Phantom("p", "s", adc_units=units)
    images = p.images()
    assert detect_adc_factor(images["adc"], p.gland_mask()) == factor
    assert detect_adc_factor(images["adc"]) == factor  # central region when no gland
    mm2 = sitk.Cast(images["adc"], sitk.sitkFloat32) * (1e-6 / factor)
    assert detect_adc_factor(mm2) == pytest.approx(1e6)


def test_normalization_maps_tissue_to_the_same_scale_across_units_and_gain():
    values = {}
    for units, gain in (("1e-6", 1.0), ("1e-3", 3.0)):
        p = Phantom("p", "s", adc_units=units)
        images = p.images()
        images["t2w"] = sitk.Cast(images["t2w"], sitk.sitkFloat32) * gain
        study = Study("a", "p", "s", images, gland_mask=p.gland_mask())
        norm = fit_normalization(study)
        adc = sitk.GetArrayFromImage(images["adc"]).astype(np.float64)
        t2 = sitk.GetArrayFromImage(images["t2w"]).astype(np.float64)
        values[units] = (np.median(norm.apply("adc", adc)), np.median(norm.apply("t2w", t2)))
    assert values["1e-6"][0] == pytest.approx(values["1e-3"][0], abs=0.01)
    assert values["1e-6"][0] == pytest.approx(2000 / ADC_SCALE, abs=0.05)  # background ADC 2000
    assert values["1e-6"][1] == pytest.approx(values["1e-3"][1], abs=0.02)  # T2 gain cancels


def test_aligned_volumes_put_a_world_marker_on_one_voxel_in_all_sequences():
    marker = CENTRE + np.array([2.5, -1.5, 0.0])
    p = Phantom(
        "p",
        "s",
        marker=tuple(marker),
        t2_grid=Grid((56, 56, 12), (0.8, 0.8, 3.0), rotation(0.1, 0.2, -0.3)),
        dwi_grid=Grid(
            (30, 28, 12), (2.0, 1.8, 3.0), rotation(0.15, 0.2, -0.2), shift=(0.4, 0.6, -0.5)
        ),
    )
    study = Study("a", "p", "s", p.images())
    volumes = aligned_volumes(study, spacing=0.5)
    ref = volumes["t2w"]
    assert (
        ref.GetSpacing()[:2] == (0.5, 0.5)
        and ref.GetDirection() == study.images["t2w"].GetDirection()
    )
    expected = np.array(ref.TransformPhysicalPointToContinuousIndex(tuple(marker)))
    for seq, vol in volumes.items():
        arr = sitk.GetArrayFromImage(vol)
        k = int(round(expected[2]))
        plane = arr[k] - np.median(arr[k])
        w = np.clip(plane - 0.5 * plane.max(), 0, None)
        rows, cols = np.indices(w.shape)
        centroid = np.array([(cols * w).sum(), (rows * w).sum()]) / w.sum()
        assert np.abs(centroid - expected[:2]).max() <= 1.0, seq
