"""Detection maps: each finding's probability on its ball in T2 space, read by picai_eval."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from scipy import ndimage

from fedprostate.data.detection_maps import detection_map, write_detection_maps
from fedprostate.data.formats.registry import list_studies, load_study
from fedprostate.data.study import Finding, Study
from mri_fixtures import Grid, Phantom, picai_phantoms, rotation, write_picai


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = write_picai(tmp_path_factory.mktemp("dm") / "raw", picai_phantoms(n=6, seed=1))
    _, refs, _ = list_studies(root)
    return [load_study(ref, seed=0, negatives=2) for ref in refs]


def _rows(studies, positive=0.9, negative=0.2) -> list[dict]:
    return [
        {
            "patient_id": s.patient_id,
            "study_id": s.study_id,
            "finding_id": f.finding_id,
            "label": int(f.clinsig),
            "score": positive if f.clinsig else negative,
        }
        for s in studies
        for f in s.findings
    ]


def test_each_finding_is_one_constant_component_at_its_place(studies):
    study = next(s for s in studies if any(f.clinsig for f in s.findings))
    scores = {f.finding_id: 0.1 + 0.2 * k for k, f in enumerate(study.findings)}
    image = detection_map(study, scores)
    t2 = study.images["t2w"]
    assert image.GetSize() == t2.GetSize() and image.GetOrigin() == t2.GetOrigin()
    assert image.GetDirection() == t2.GetDirection()
    volume = sitk.GetArrayFromImage(image)
    components, n = ndimage.label(volume > 0, structure=np.ones((3, 3, 3)))
    assert n == len(study.findings)  # far-apart findings stay separate
    for f in study.findings:
        i, j, k = t2.TransformPhysicalPointToIndex(f.world_mm)
        assert volume[k, j, i] == pytest.approx(scores[f.finding_id])
        assert set(np.unique(volume[components == components[k, j, i]])) == {
            np.float32(scores[f.finding_id])
        }
    # a finding without a score is left out, the others are still painted
    last = study.findings[-1].finding_id
    only_last = sitk.GetArrayFromImage(detection_map(study, {last: 0.4}))
    assert ndimage.label(only_last > 0)[1] == 1 and only_last.max() == np.float32(0.4)


def test_touching_balls_become_one_component_with_the_higher_probability(studies):
    study = studies[0]
    centre = study.findings[0].world_mm
    shifted = (centre[0] + 3.0, centre[1], centre[2])
    study = type(study)(**{**study.__dict__, "findings": [
        Finding("A", centre, source="sampled", radius_mm=4.0),
        Finding("B", shifted, source="sampled", radius_mm=4.0),
    ]})  # fmt: skip
    volume = sitk.GetArrayFromImage(detection_map(study, {"A": 0.3, "B": 0.7}))
    assert set(np.unique(volume)) == {0.0, np.float32(0.7)}


def test_the_ball_is_measured_in_world_mm_on_an_oblique_grid():
    p = Phantom("1", "1", t2_grid=Grid((40, 40, 14), (0.8, 0.8, 3.0), rotation(0.3, 0.2, 0.4)))
    index_mm = np.array([20.3, 19.6, 6.8]) * p.t2_grid.spacing  # off the lattice: no ties
    centre = tuple(float(v) for v in p.t2_grid.origin() + p.t2_grid.direction @ index_mm)
    study = Study("s", "1", "1", p.images(), [Finding("A", centre, source="sampled", radius_mm=6)])
    volume = sitk.GetArrayFromImage(detection_map(study, {"A": 0.5}))
    world = p.t2_grid.world()
    inside = np.linalg.norm(world - np.asarray(centre), axis=-1) <= 6.0
    assert np.array_equal(volume > 0, inside)


def test_picai_eval_reads_the_written_maps(studies, tmp_path):
    picai_eval = pytest.importorskip("picai_eval")
    written = write_detection_maps(studies, _rows(studies), tmp_path, suffix=".nii.gz")
    assert len(written) == len(studies)
    metrics = picai_eval.evaluate(
        y_det=[w["detection_map"] for w in written],
        y_true=[w["label"] for w in written],
        subject_list=[w["case"] for w in written],
        num_parallel_calls=1,
    )
    n_lesions = sum(f.clinsig for s in studies for f in s.findings)
    assert metrics.num_cases == len(studies) and metrics.num_lesions == n_lesions > 0
    # every csPCa finding's ball overlaps its lesion enough to count as a hit
    hits = [hit for case in metrics.lesion_results.values() for hit, conf, _ in case if conf > 0.5]
    assert hits == [1] * n_lesions
    assert metrics.auroc == pytest.approx(1.0) and metrics.AP == pytest.approx(1.0)


def test_mha_maps_and_bad_inputs(studies, tmp_path):
    written = write_detection_maps(studies[:1], _rows(studies[:1]), tmp_path, suffix=".mha")
    assert written[0]["detection_map"].endswith(".mha")
    assert sitk.ReadImage(written[0]["label"]).GetPixelID() == sitk.sitkUInt8
    with pytest.raises(ValueError, match="suffix"):
        write_detection_maps(studies, [], tmp_path, suffix=".png")
    with pytest.raises(ValueError, match="outside"):
        detection_map(studies[0], {studies[0].findings[0].finding_id: 1.5})
