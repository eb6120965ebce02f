""" "It trains" is guarded: a tiny federated run learns the clinical question above chance.

The tiny cache (``fl_fixtures``) has, per patient, one reader finding whose csPCa label is
visible as restricted diffusion and T2 darkening (with noise), and one sampled location. With a
fixed seed, four rounds of federated LoRA must rank the test split's reader findings well above
chance; the untrained model (round 0) must not. The bound is fixed here, measured once.
"""

import json

import pytest

from fedprostate.runs.federated import federate
from fl_fixtures import tiny_config, write_tiny_cache

pytestmark = pytest.mark.slow

# measured 0.923 with this seed and fixture (round 0: 0.567; 21 validation and 21 test reader
# findings); chance is 0.5. The earlier fixture's validation split (6 findings) chose round 3 on
# a tie at AUROC 1.0, test 0.788: too small a split to choose a round on.
LEARNED = 0.80


def test_a_tiny_federated_run_learns_reader_findings_above_chance(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache", patients_per_site=20, beyond_ten=("val", "test"))
    cfg = tiny_config(cache, **{"fl.rounds": 4, "train.steps": 6, "eval.n_boot": 50})
    summary = federate(cfg, tmp_path / "run")
    text = (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8")
    rounds = [json.loads(x) for x in text.splitlines()]
    assert rounds[0]["round"] == 0 and rounds[0]["test"]["auroc"] < 0.75  # untrained: not yet
    assert summary["test_auroc"] >= LEARNED, summary
    assert summary["best_round"] >= 1
