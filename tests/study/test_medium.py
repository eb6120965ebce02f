"""configs/study-medium.toml: the full federation, every section, 3 seeds, a <= 3 h plan."""

from __future__ import annotations

from pathlib import Path

from fedprostate.data.splits import _counts
from fedprostate.study import runner
from fedprostate.study.cells import build_cells
from fedprostate.study.config import SECTIONS, StudyConfig

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "study-medium.toml"


def test_study_medium_is_the_full_federation_with_three_seeds(tmp_path):
    """Mutants: a section dropped, fewer than 3 seeds, a test split under 400 patients, no
    stopping rule, or a plan estimated over 3 hours on 2 cores -> fail."""
    cfg = StudyConfig.load(CONFIG)
    assert set(cfg.sections) == set(SECTIONS)
    assert (cfg.data.sites, cfg.data.patients) == (17, 2040)
    assert len(cfg.seeds) >= 3
    assert _counts(cfg.data.patients, cfg.data.fractions())[2] >= 400  # the test split
    rule = cfg.stopping_rule()
    assert rule["patience"] > 0 and rule["on"] == "validation AUROC"
    assert cfg.prereg.min_test_patients >= 300 and cfg.prereg.min_test_positives >= 30
    out = tmp_path / "plan"
    paths = runner.planned_paths(cfg, out)
    arms, cells = build_cells(cfg, paths)
    extra, _ = runner.planned_seed_cells(cfg, arms, cells, out)
    assert {a.id for a in arms} >= {"uplink-int2", "distill-student", "local-only", "centralized"}
    assert len(extra) == len(arms) * (len(cfg.seeds) - 1)
    seconds = runner.estimate(cfg, cells + extra, paths)
    total = sum(seconds.values()) + runner._inputs_estimate(cfg, paths)
    assert total <= 3 * 3600, f"estimated {total / 3600:.2f} h"
