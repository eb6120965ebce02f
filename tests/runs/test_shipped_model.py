"""The shipped model is the one described: the validation-chosen round, end to end.

One federated run whose validation peaks in round 1 and then degrades (a deliberately large server
learning rate), so shipping the last round would be visibly wrong.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fedprostate.cli import app
from fedprostate.engine import setup
from fedprostate.engine.loop import headline_mask, predict_scores
from fedprostate.eval.calibration import apply_temperature
from fedprostate.eval.metrics import choose_threshold
from fedprostate.models.bundle import load_bundle
from fedprostate.runs.export import export_run
from fedprostate.runs.federated import federate
from fl_fixtures import tiny_config, write_tiny_cache

pytestmark = pytest.mark.slow


def test_resume_is_a_noop_and_the_card_describes_the_exported_weights(tmp_path):
    # seed 4: both classes among the 4 validation reader findings, so a threshold is chosen
    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA", "siteB"), seed=4)
    cfg = tiny_config(cache, **{"fl.rounds": 3, "fl.server_lr": 0.3})
    run = tmp_path / "run"
    summary = federate(cfg, run)
    assert summary["best_round"] == 1 < summary["rounds"]  # the premise: best is not last
    # model.safetensors holds the validation-chosen round's weights, not the last round's.
    assert summary["model_round"] == 1
    shipped = load_file(str(run / "model.safetensors"))
    best = load_file(str(run / "checkpoints" / "round_0001.safetensors"))
    last = load_file(str(run / "checkpoints" / "round_0003.safetensors"))
    assert all(np.array_equal(shipped[k], best[k]) for k in best)
    assert any(not np.array_equal(shipped[k], last[k]) for k in last)

    # Finding 5: resuming a finished run reran and rewrote summary.json without best_round.
    before = (run / "summary.json").read_bytes()
    runner = CliRunner()
    result = runner.invoke(app, ["federate", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert "already finished 3 rounds: nothing to do" in result.output
    assert (run / "summary.json").read_bytes() == before
    # Finding 4: resuming with another configuration silently overwrote config.toml.
    config = (run / "config.toml").read_bytes()
    changed = runner.invoke(app, ["federate", "--resume", str(run), "--set", "train.lr=0.01"])
    assert changed.exit_code == 2
    assert "train.lr: 0.003 -> 0.01" in changed.output and "--force" in changed.output
    assert (run / "config.toml").read_bytes() == config

    # The card and the threshold are computed from exactly the exported weights.
    meta = export_run(run, tmp_path / "bundle", formats=("bundle",), n_boot=20)
    model, loaded = load_bundle(tmp_path / "bundle", expected_sha256=meta["bundle_sha256"])
    assert loaded["best_round"] == 1
    run_cfg = setup.prepare_run_config(cfg, run)
    scored = {}
    for split in ("val", "test"):
        dataset = setup.pooled_dataset(run_cfg, split)
        scores, labels = predict_scores(model, dataset)
        keep = headline_mask(dataset)  # the clinical findings, never sampled tissue
        calibrated = apply_temperature(scores[keep], loaded["temperature"])
        scored[split] = (labels[keep], calibrated)
    assert 0 < scored["val"][0].sum() < len(scored["val"][0])  # a threshold can be chosen
    threshold = choose_threshold(*scored["val"], "youden")
    assert loaded["threshold"] == pytest.approx(threshold, abs=1e-6)
    auroc = roc_auc_score(*scored["test"])
    assert loaded["test_auroc"]["estimate"] == pytest.approx(auroc, abs=1e-6)
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert re.search(rf"finding-level AUROC: {auroc:.3f}", card), card
    assert f"operating threshold: {threshold:.4f}" in card
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text(encoding="utf-8"))[
        "weights_source"
    ] == ("checkpoints/round_0001.safetensors")
