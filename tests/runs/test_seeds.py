"""Seeds as a first-class option: one run per seed, a t-interval over seeds, resumable sweeps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedprostate.cli import app
from fedprostate.config import RunConfig
from fedprostate.eval.bootstrap import seed_ci
from fedprostate.records import predictions
from fedprostate.runs import seeds as seeds_mod
from fl_fixtures import write_tiny_cache


def _fake_runner(calls: list):
    def run(cfg: RunConfig, out):
        calls.append(cfg.seed)
        out.mkdir(parents=True)
        auc = 0.7 + 0.05 * cfg.seed
        summary = {"kind": "centralized", "status": "finished", "val_auroc": auc - 0.1,
                   "test_auroc": auc, "test_ap": auc - 0.2}  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary))
        rng = np.random.default_rng(cfg.seed)
        rows = [{"site": "s", "patient_id": str(p), "study_id": "1", "finding_id": "f",
                 "source": "biopsied", "label": p % 2, "score": float(rng.random() + p % 2)}
                for p in range(12)]  # fmt: skip
        predictions.write(out / "predictions_test_best.csv", rows)
        return summary

    return run


def test_one_run_per_seed_and_the_t_interval_over_seeds(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setitem(seeds_mod.RUNNERS, "centralized", _fake_runner(calls))
    result = seeds_mod.run_seeds("centralized", RunConfig(), [0, 1, 2], tmp_path)
    assert calls == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.glob("seed_*")) == ["seed_0", "seed_1", "seed_2"]
    assert result["metrics"]["test_auroc"] == pytest.approx(seed_ci([0.7, 0.75, 0.8]))
    assert result["metrics"]["test_auroc"]["low"] < 0.75 < result["metrics"]["test_auroc"]["high"]
    assert result["metrics"]["ranking_score"]["n"] == 3
    assert json.loads((tmp_path / "seeds.json").read_text(encoding="utf-8"))["seeds"] == [0, 1, 2]
    # a killed sweep goes on: finished seeds are not run again
    calls.clear()
    seeds_mod.run_seeds("centralized", RunConfig(), [0, 1, 2, 3], tmp_path)
    assert calls == [3]


def test_report_of_a_seed_sweep(tmp_path, monkeypatch):
    monkeypatch.setitem(seeds_mod.RUNNERS, "centralized", _fake_runner([]))
    seeds_mod.run_seeds("centralized", RunConfig(), [0, 1], tmp_path)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Spread over seeds" in md and "PI-CAI ranking score" in md
    assert "| seed |" in md and (tmp_path / "report.html").is_file()


@pytest.mark.parametrize("text, seeds", [("0,1,2", [0, 1, 2]), ("3-5", [3, 4, 5]),
                                         ("2,0-1,2", [0, 1, 2])])  # fmt: skip
def test_seed_lists(text, seeds):
    from fedprostate.commands.runs import parse_seeds

    assert parse_seeds(text) == seeds


@pytest.mark.slow
def test_centralize_seeds_from_the_command_line(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA", "siteB"))
    args = ["centralize", "--data", str(cache), "--out", str(tmp_path / "sweep"), "--seeds",
            "0,1", "--json", "--set", "model.arch=swin_test", "--set", "model.crop=32",
            "--set", "finetune.lora_r=2", "--set", "train.steps=1", "--set", "fl.rounds=1",
            "--set", "train.batch_size=8", "--set", "fl.min_sites=2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["seeds"] == [0, 1] and out["metrics"]["test_auroc"]["n"] == 2
    for seed in (0, 1):
        cfg = (tmp_path / "sweep" / f"seed_{seed}" / "config.toml").read_text(encoding="utf-8")
        assert f"seed = {seed}\n" in cfg
