"""Centralized and local-only baselines: the same loop, the same outputs as a federated run."""

import csv
import json

import pytest
from sklearn.metrics import roc_auc_score

from fedprostate.runs.pooled import centralize, local_only
from fl_fixtures import tiny_config, write_tiny_cache


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return tiny_config(write_tiny_cache(tmp_path_factory.mktemp("pooled_cache")))


def _rows(path):
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_centralized_pools_every_site_and_chooses_the_best_round_on_validation(cfg, tmp_path):
    summary = centralize(cfg, tmp_path / "c")
    rounds = [
        json.loads(x)
        for x in (tmp_path / "c" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [r["round"] for r in rounds] == [1, 2]
    best = max(rounds, key=lambda r: r["val"]["auroc"])
    assert summary["best_round"] == best["round"]
    assert summary["test_auroc"] == pytest.approx(best["test"]["auroc"])
    test = _rows(tmp_path / "c" / "predictions_test_best.csv")
    assert {r["site"] for r in test} == {"siteA", "siteB", "siteC"}  # pooled test split
    assert set(summary["per_site_test_auroc"]) == {"siteA", "siteB", "siteC"}
    assert summary["trainable_params"] > 0 and (tmp_path / "c" / "model.safetensors").exists()
    assert (tmp_path / "c" / "config.toml").exists()
    # equal local compute: a centralized round is a federated round of all 3 sites (steps x 3)
    assert all(r["examples_seen"] == 3 * cfg.train.steps * cfg.train.batch_size for r in rounds)


def test_local_only_trains_each_site_alone_and_scores_own_and_pooled_test(cfg, tmp_path):
    summary = local_only(cfg, tmp_path / "l")
    assert set(summary["per_site"]) == {"siteA", "siteB", "siteC"}
    for site in summary["per_site"].values():
        assert {"own_test_auroc", "pooled_test_auroc", "best_round"} <= set(site)
    rounds = [
        json.loads(x)
        for x in (tmp_path / "l" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert sorted({r["client"] for r in rounds}) == ["siteA", "siteB", "siteC"]
    # Each site's own test findings are scored by that site's own model only.
    test = _rows(tmp_path / "l" / "predictions_test_best.csv")
    assert len(test) == len({(r["site"], r["patient_id"], r["finding_id"]) for r in test})
    assert summary["uplink_mb_per_client_round"] == 0.0
    # the number the study chooses the local-only arm's learning rate by: AUROC over every
    # site's own validation findings at its validation-chosen round (no test number)
    val = [r for r in _rows(tmp_path / "l" / "predictions_val_best.csv") if r["source"] == "reader"]
    expected = roc_auc_score([int(r["label"]) for r in val], [float(r["score"]) for r in val])
    assert summary["val_auroc"] == pytest.approx(expected)
    assert all(r["examples_seen"] == cfg.train.steps * cfg.train.batch_size for r in rounds)
