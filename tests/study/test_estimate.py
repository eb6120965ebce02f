"""The study's time estimate counts what each run kind evaluates, at each architecture's cost."""

from __future__ import annotations

import pytest

from fedprostate.config import RunConfig
from fedprostate.study.cells import Cell
from fedprostate.study.estimate import cell_seconds, images_per_second, inputs_seconds


def _cell(kind: str, arch: str = "swin_test") -> Cell:
    cfg = RunConfig().replace(
        **{"model.arch": arch, "model.crop": 32, "train.steps": 3, "fl.rounds": 10}
    )
    return Cell(id=f"{kind}-x", arm="x", kind=kind, lr=1e-3, config=cfg)


@pytest.mark.parametrize("kind", ["local", "federate", "centralize"])
def test_the_validation_split_is_scored_once_per_round_whatever_the_number_of_sites(kind):
    """Mutant: local-only's validation counted once per site (run 1: 253 s estimated for a
    local-only cell measured at 77-94 s) -> the 17-site extra grows with the sites and fails."""
    extra = [
        cell_seconds(_cell(kind), n, 10.0, 1000.0, 0.0, cores=2)
        - cell_seconds(_cell(kind), n, 10.0, 0.0, 0.0, cores=2)
        for n in (2, 17)
    ]
    assert extra[0] == pytest.approx(extra[1])
    assert extra[0] > 0


def test_local_only_scores_the_pooled_test_split_at_every_site():
    """Mutant: the pooled test split counted once for local-only (it is scored by each site)."""
    local = [
        cell_seconds(_cell("local"), n, 10.0, 0.0, 1000.0, cores=2)
        - cell_seconds(_cell("local"), n, 10.0, 0.0, 0.0, cores=2)
        for n in (2, 17)
    ]
    assert local[1] / local[0] == pytest.approx(18 / 3)


def test_the_distillation_student_has_its_own_cost_not_the_fallback_swin_t():
    """Mutant: student_test missing from the table -> Swin-T's 36 img/s at 64 px, scaled to
    144 img/s at 32 px (run 1: 202 s estimated against 63-82 s measured)."""
    student, resnet = images_per_second("student_test", 32), images_per_second("resnet_test", 32)
    assert student == pytest.approx(resnet * 13.5 / 12.9, rel=0.01)


def test_an_organ_cache_costs_less_per_study_than_a_lesion_cache():
    """Measured in run 1: 192 s (lesion) and 128 s (organ) for 2,040 studies."""
    lesion = inputs_seconds(2040, 0, ("lesion",), 0, 0, 0, 32)
    both = inputs_seconds(2040, 0, ("lesion", "organ"), 0, 0, 0, 32)
    none = inputs_seconds(2040, 0, (), 0, 0, 0, 32)
    assert lesion - none == pytest.approx(192, rel=0.01)
    assert both - lesion == pytest.approx(128, rel=0.01)
