"""A federated run refuses before training (exit 2, one line naming the key) when no round could
aggregate (fl.min_sites), when adaptive clipping cannot give the noise asked for, or when the
privacy plan exceeds its budget."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedprostate.config import ConfigError
from fedprostate.engine import setup
from fedprostate.runs.federated import preflight
from fl_fixtures import tiny_config, write_tiny_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_tiny_cache(tmp_path_factory.mktemp("pre") / "cache")  # three sites


def test_min_sites_larger_than_the_federation_is_refused(cache):
    with pytest.raises(ConfigError, match=r"fl\.min_sites = 4 is larger than the federation"):
        preflight(tiny_config(cache, **{"fl.min_sites": 4}))
    assert preflight(tiny_config(cache, **{"fl.min_sites": 3})) == {}


def test_adaptive_clipping_count_noise_must_exceed_half_the_multiplier(cache):
    dp = {"fl.strategy": "fedavg", "privacy.client": "server-adaptive", "privacy.delta": 1e-3}
    with pytest.raises(ConfigError, match=r"privacy\.clipped_count_stddev"):
        preflight(tiny_config(cache, **dp, **{"privacy.noise_multiplier": 0.5}))
    ok = tiny_config(
        cache, **dp, **{"privacy.noise_multiplier": 0.5, "privacy.clipped_count_stddev": 0.3}
    )
    assert preflight(ok)["client"]["epsilon"] > 0


def test_delta_defaults_to_one_over_the_training_patients(cache):
    cfg = tiny_config(cache, **{"fl.strategy": "fedavg", "privacy.client": "server-fixed"})
    patients = setup.federation_patients(cfg)
    assert patients == 3 * 6  # patients 0-9 of each site cycle train/train/train/val/test
    assert setup.resolve_privacy(cfg).privacy.delta == pytest.approx(1 / patients)


def test_federate_over_budget_exits_2_naming_the_key(cache, tmp_path):
    proc = subprocess.run(
        [
            sys.executable, "-c", "from fedprostate.cli import app; app()", "federate",
            "--data", str(cache), "--out", str(tmp_path / "run"),
            "--set", "fl.strategy=fedavg", "--set", "privacy.client=server-fixed",
            "--set", "privacy.noise_multiplier=0.3", "--set", "privacy.epsilon=1",
            "--set", "model.crop=32",  # the tiny cache holds 32 px crops
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "privacy.noise_multiplier" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
