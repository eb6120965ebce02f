"""A federated run that aggregated nothing fails loudly instead of reporting an untrained model."""

import json

import pytest
from typer.testing import CliRunner

from fedprostate.cli import app
from fedprostate.runs.federated import RunFailedError, federate
from fl_fixtures import tiny_config, write_tiny_cache

pytestmark = pytest.mark.slow


def test_every_reply_rejected_means_a_failed_run_and_a_nonzero_exit(tmp_path):
    # seed 3: both classes among the validation reader findings (a run needs them to start)
    cache = write_tiny_cache(
        tmp_path / "cache", sites=("siteA", "siteB"), patients_per_site=6, seed=3
    )
    # Every site fails to load this teacher, so every training reply is an error reply.
    cfg = tiny_config(cache, **{"fl.rounds": 2, "distill.teacher": str(tmp_path / "no-teacher")})
    with pytest.raises(RunFailedError, match="no update was aggregated in any round"):
        federate(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "failed" and "test_auroc" not in summary
    assert summary["rejected_replies"] == 4  # 2 sites x 2 rounds
    config = tmp_path / "run" / "config.toml"
    result = CliRunner().invoke(app, ["federate", "--resume", str(tmp_path / "run")])
    assert result.exit_code == 1 and "run failed" in result.output, (result.output, config)
