"""The demo end to end at a reduced size (``fedprostate demo --quick``): the one Flower
simulation in the report/study/demo tests."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from fedprostate.demo import load_demo_config
from report_checks import render_problems


def test_demo_config_overrides_and_quick():
    plan, cfg = load_demo_config(None, ["demo.patients=40", "fl.rounds=3"])
    assert plan.patients == 40 and cfg.fl.rounds == 3
    assert cfg.compress.uplink == "int8" and cfg.finetune.method == "lora"
    assert cfg.fl.strategy == "fedadam"
    quick_plan, quick_cfg = load_demo_config(None, quick=True)
    assert quick_plan.patients < plan.patients and quick_cfg.fl.rounds < cfg.fl.rounds
    with pytest.raises(ValueError, match="unknown"):
        load_demo_config(None, ["demo.nonsense=1"])


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    from fedprostate.cli import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = out / "run"
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["uplink_codec"] == "int8" and summary["strategy"] == "fedadam"
    # the federation started from the self-supervised foundation trained on the unlabeled pool
    meta = json.loads((out / "foundation" / "swin_test.json").read_text(encoding="utf-8"))
    assert meta["pretrain"]["method"] == "simmim"
    config = (run / "config.toml").read_text(encoding="utf-8")
    assert "swin_test.safetensors" in config
    html = (run / "report.html").read_text(encoding="utf-8")
    assert all(s.startswith("data:") for s in re.findall(r'src="([^"]*)"', html))
    assert render_problems(run / "report.html") == []  # figures, square tables, offline
    assert str(run / "report.html") in result.output.replace("\n", "")
    evaluation = json.loads((run / "evaluation.json").read_text(encoding="utf-8"))
    assert "mean-ADC rule" in evaluation["baselines"]
