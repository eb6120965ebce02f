"""Unlabeled pre-training pools: where crops are drawn, the pool file, the split across sites."""

import numpy as np
import pytest
import SimpleITK as sitk

from fedprostate.data.unlabeled import (
    REACH_MM,
    PoolError,
    crop_centres,
    extract_pool,
    load_pool,
    save_pool,
    site_of_study,
    split_pool,
)
from mri_fixtures import picai_phantoms, write_picai


def test_crop_centres_cover_an_ellipsoid_around_the_field_of_view_centre():
    image = sitk.Image(200, 180, 24, sitk.sitkInt16)
    image.SetSpacing((0.5, 0.5, 3.0))
    image.SetOrigin((-50.0, -40.0, -30.0))
    middle = np.asarray(image.TransformContinuousIndexToPhysicalPoint((99.5, 89.5, 11.5)))
    points = np.asarray(crop_centres(image, np.random.default_rng(0), 2000))
    offset = (points - middle) / np.asarray(REACH_MM)
    radius = np.linalg.norm(offset, axis=1)
    assert radius.max() <= 1.0 + 1e-9  # inside the ellipsoid (mm, whatever the voxel size)
    assert np.quantile(radius, 0.5) == pytest.approx(0.5 ** (1 / 3), abs=0.05)  # uniform volume
    for axis in range(3):  # reaches the gland's surroundings on every side
        assert offset[:, axis].min() < -0.8 and offset[:, axis].max() > 0.8


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = write_picai(tmp_path_factory.mktemp("raw"), picai_phantoms(3))
    (root / "labels").rename(root.parent / "hidden_labels")  # images only
    return root


def test_pool_is_per_study_deterministic_and_independent_of_workers(raw, tmp_path):
    one = extract_pool(raw, crop=16, spacing=1.0, per_study=4, seed=0)
    two = extract_pool(raw, crop=16, spacing=1.0, per_study=4, seed=0, workers=2)
    assert one.crops.shape == (12, 3, 16, 16) and len(one.studies) == 3
    np.testing.assert_array_equal(one.crops, two.crops)
    assert np.bincount(one.study).tolist() == [4, 4, 4]
    path = save_pool(tmp_path / "pool.safetensors", one)
    back = load_pool(path)
    np.testing.assert_allclose(back.crops, one.crops, atol=2e-3)  # stored as float16
    assert back.studies == one.studies and back.meta["spacing"] == 1.0
    np.testing.assert_array_equal(back.study, one.study)


def test_focal_crops_sit_on_label_free_proposals(raw):
    plain = extract_pool(raw, crop=16, spacing=1.0, per_study=4, seed=0)
    pool = extract_pool(raw, crop=16, spacing=1.0, per_study=4, seed=0, focal=2)
    assert pool.meta["focal"] == 2 and len(pool) == 12  # each phantom has a restricted focus
    for s in range(3):  # the same 2 random centres, then 2 crops on the study's foci
        mine, theirs = pool.crops[pool.study == s], plain.crops[plain.study == s]
        np.testing.assert_array_equal(mine[:2], theirs[:2])
        assert not np.allclose(mine[2:], theirs[2:])
        adc_centre = mine[:, 1, 6:10, 6:10].mean(axis=(1, 2))
        assert adc_centre[2:].min() < adc_centre[:2].min()  # a focus is darker on ADC
    with pytest.raises(PoolError, match="focal"):
        extract_pool(raw, crop=16, per_study=2, focal=3)


def test_zero_readable_studies_and_an_empty_folder_are_named(raw, tmp_path):
    with pytest.raises(PoolError, match="no unlabeled studies"):
        extract_pool(tmp_path)
    broken = write_picai(tmp_path / "broken", picai_phantoms(2))
    for adc in broken.glob("images/*/*_adc.mha"):
        adc.write_bytes(b"not an image")
    with pytest.raises(PoolError, match="none of the 2 unlabeled studies.*2 unreadable; first"):
        extract_pool(broken, crop=16, spacing=1.0, per_study=2)


def test_split_keeps_whole_studies_per_site(raw):
    pool = extract_pool(raw, crop=16, spacing=1.0, per_study=4, seed=0)
    parts = split_pool(pool, 2, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(pool)))
    for part in parts:
        owners = {site_of_study(pool.studies[s], 2, 1) for s in pool.study[part]}
        assert len(owners) == 1
    assert [p.tolist() for p in split_pool(pool, 2, seed=1)] == [p.tolist() for p in parts]
    with pytest.raises(PoolError, match="fewer than 2 crops"):
        split_pool(pool, 50)


def test_truncated_pool_file_is_a_pool_error(raw, tmp_path):
    path = save_pool(
        tmp_path / "p.safetensors", extract_pool(raw, crop=16, spacing=1.0, per_study=2)
    )
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PoolError, match="not a readable .safetensors"):
        load_pool(path)
