"""``fedprostate audit RUN --shadows K``: LiRA with shadow models on a tiny centralized run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedprostate.cli import app
from fedprostate.runs import lira
from fedprostate.runs.pooled import centralize
from fl_fixtures import tiny_config, write_tiny_cache


@pytest.mark.slow
def test_audit_with_two_shadows_and_its_bad_inputs(tmp_path, monkeypatch):
    run = tmp_path / "run"
    centralize(tiny_config(write_tiny_cache(tmp_path / "cache")), run)
    trained: list[set[str]] = []
    real = lira.train_local

    def spy(model, dataset, *args, **kwargs):
        trained.append({f"{r['site']}/{r['patient_id']}" for r in dataset.rows})
        return real(model, dataset, *args, **kwargs)

    monkeypatch.setattr(lira, "train_local", spy)
    args = ["audit", str(run), "--n-boot", "50", "--shadows", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((run / "membership_audit.json").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert set(report["attacks"]) == {"loss", "confidence", "lira_offline", "lira_online"}
    for name in ("lira_offline", "lira_online"):
        r = report["attacks"][name]
        assert r["members"] == 18 and r["non_members"] == 18
        assert r["ci_low"] <= r["auc"] <= r["ci_high"]
        assert r["tpr_at_fpr_0.01"] is None and "100 non-members" in r["tpr_at_fpr_0.01_missing"]
        assert 0 <= r["tpr_at_fpr_0.1"] <= 1
    assert report["lira"]["shadows"] == 2 and report["lira"]["rounds"] == summary["best_round"]
    # with 2 shadows every patient of the pool (36) trains exactly one, one train_local a round
    rounds = report["lira"]["rounds"]
    assert len(trained) == 2 * rounds and report["lira"]["patients_per_shadow"] == 18
    first, second = trained[0], trained[rounds]
    assert first and second and not first & second and len(first | second) == 36
    assert report["privacy"]["auc_bound"] == 1.0  # no DP: no bound

    for bad in ("0", "1"):
        out = CliRunner().invoke(app, ["audit", str(run), "--shadows", bad])
        assert out.exit_code == 2 and f"--shadows {bad}: LiRA needs at least 2" in out.output
    monkeypatch.setattr(lira, "MIN_POOL_PATIENTS", 100)
    out = CliRunner().invoke(app, ["audit", str(run), "--shadows", "2"])
    assert out.exit_code == 2 and "36 patients in the audit pool" in out.output
