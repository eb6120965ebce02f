"""fl.site_val_every: a site scores its own validation split inside a training round only every k
rounds and in the last one (0 = never); the reply keeps the same metric keys every round."""

import math

import pytest

from fedprostate.config import ConfigError
from fedprostate.engine import setup
from fedprostate.fl import client
from fedprostate.fl.client import SiteContext, site_val_due, train_round
from fl_fixtures import tiny_config, write_tiny_cache


def test_due_every_k_rounds_and_in_the_last(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache")
    due = {
        k: [r for r in range(1, 6) if site_val_due(tiny_config(cache, **{"fl.rounds": 5,
                                                   "fl.site_val_every": k}), r)]
        for k in (1, 2, 0)
    }  # fmt: skip
    assert due == {1: [1, 2, 3, 4, 5], 2: [2, 4, 5], 0: []}
    with pytest.raises(ConfigError, match="fl.site_val_every"):
        tiny_config(cache, **{"fl.site_val_every": -1})


def test_a_round_without_site_validation_skips_the_scoring(tmp_path, monkeypatch):
    cache = write_tiny_cache(tmp_path / "cache")
    cfg = tiny_config(cache, **{"fl.rounds": 3, "fl.site_val_every": 2, "train.threads": 1})
    scored = []
    real = client.score_dataset
    monkeypatch.setattr(client, "score_dataset", lambda *a, **k: scored.append(1) or real(*a, **k))
    site = SiteContext("siteA", None, "fp32")
    received = setup.build_model(cfg).initial_communicated
    _, skipped = train_round(cfg, site, 1, received)
    assert scored == [] and skipped["val-n"] == 0 and math.isnan(skipped["val-auroc"])
    assert skipped["num-examples"] > 1 and math.isfinite(skipped["train-loss"])  # still weighed
    _, done = train_round(cfg, site, 2, received)
    assert scored == [1] and done["val-n"] > 0
    assert set(done) == set(skipped)
