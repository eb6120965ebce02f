"""The synthetic radiologist: scores what is visible, never the label, and reads like the literature."""

import dataclasses

import numpy as np
import pytest

from fedprostate.data.synth import reader
from fedprostate.data.synth.anatomy import draw_lesion, make_phantom
from fedprostate.data.synth.exam import plan_findings
from fedprostate.data.synth.federation import patient_rng, plan_site
from fedprostate.data.synth.sites import make_site_profiles


def _read_federation(patients: int = 700):
    """Reader statistics over every site's phantoms (no images needed: the reader sees tissue
    properties, morphology and size, which is what the images are rendered from)."""
    found = total = 0
    share = {3: [0, 0], 4: [0, 0], 5: [0, 0]}
    kinds: dict[str, list[int]] = {}
    for s, prof in enumerate(make_site_profiles(17, patients)):
        positive, _ = plan_site(prof, s, 0)
        for p in range(prof.n_patients):
            rng = patient_rng(0, s, p)
            phantom = make_phantom(rng, float(np.clip(rng.normal(66, 7), 45, 85)), prof.region)
            plan_findings(rng, phantom, bool(positive[p]))
            scores, marks = reader.read_study(phantom, prof.name, np.random.default_rng([s, p]))
            for lesion, score in zip(phantom.lesions, scores, strict=True):
                counts = kinds.setdefault(lesion.kind, [0, 0])
                counts[0] += 1
                counts[1] += score >= reader.MARK_THRESHOLD
                if lesion.isup >= 2:
                    total += 1
                    found += score >= reader.MARK_THRESHOLD
            for m in marks:
                share[m.pirads][0] += 1
                share[m.pirads][1] += m.isup >= 2
    return found / total, {k: v[1] / v[0] for k, v in share.items()}, kinds


def test_pirads_detects_and_ranks_cancer_as_in_the_literature():
    sensitivity, cspca_share, kinds = _read_federation()
    assert 0.85 <= sensitivity <= 0.95  # PI-RADS >= 3 for csPCa
    assert 0.05 <= cspca_share[3] <= 0.25
    assert 0.30 <= cspca_share[4] <= 0.65
    assert 0.65 <= cspca_share[5] <= 0.95
    assert cspca_share[3] < cspca_share[4] < cspca_share[5]
    # mimics are marked (the clinical question exists), encapsulated BPH nodules mostly not
    assert kinds["isup1"][1] / kinds["isup1"][0] > 0.3
    assert kinds["bph_nodule"][1] / kinds["bph_nodule"][0] < 0.1


def test_the_reader_sees_tissue_and_shape_never_the_kind_or_grade():
    rng = np.random.default_rng(3)
    phantom = make_phantom(rng, 65.0, "EU")
    lesion = draw_lesion(rng, phantom, "cspca", 3, "PZ")
    disguised = dataclasses.replace(lesion, kind="bph_nodule", isup=0)
    assert reader.visible_features(lesion, phantom) == reader.visible_features(disguised, phantom)
    phantom.lesions = [lesion]
    a = reader.read_study(phantom, "siteA", np.random.default_rng(1))[0]
    phantom.lesions = [disguised]
    b = reader.read_study(phantom, "siteA", np.random.default_rng(1))[0]
    assert a == b
    # ... but it does see a capsule: the same tissue, encapsulated, scores lower
    boxed = dataclasses.replace(lesion, rim_mm=1.0)
    features = reader.visible_features(boxed, phantom)
    assert reader.suspicion(features, "TZ", 0.0, 0.0) < reader.suspicion(
        reader.visible_features(lesion, phantom), "TZ", 0.0, 0.0
    )


@pytest.mark.parametrize("z, diameter, expected", [(0.0, 8, 1), (1.0, 8, 2), (2.0, 8, 3),
                                                   (3.0, 8, 4), (3.0, 16, 5), (5.5, 8, 5)])  # fmt: skip
def test_pirads_cut_points_and_the_size_rule(z, diameter, expected):
    assert reader.pirads_of(z, diameter) == expected
