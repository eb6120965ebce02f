"""The Python API: notebook entry points importable from ``fedprostate``, loaded on first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fedprostate
from fedprostate import api

ROOT = Path(__file__).resolve().parents[1]


def test_import_fedprostate_is_light_and_the_api_loads_on_first_use():
    code = (
        "import sys, fedprostate\n"
        "heavy = [m for m in ('torch', 'flwr', 'timm', 'SimpleITK', 'typer') if m in sys.modules]\n"
        "fn = fedprostate.load_config\n"
        "print(heavy, fn.__module__, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
                         check=True).stdout.split()  # fmt: skip
    assert out == ["[]", "fedprostate.api", "True"]


@pytest.mark.parametrize("name", fedprostate.API)
def test_every_entry_point_is_exported_and_documented(name):
    fn = getattr(fedprostate, name)
    assert fn is getattr(api, name) and name in dir(fedprostate) and name in api.__all__
    assert fn.__doc__ and len(fn.__doc__.split()) >= 15


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fedprostate.nope  # noqa: B018


def test_load_config_checks_values():
    cfg = fedprostate.load_config(None, ["fl.rounds=3", "model.arch=swin_test"])
    assert (cfg.fl.rounds, cfg.model.arch) == (3, "swin_test")
    with pytest.raises(ValueError, match="model.arch"):
        fedprostate.load_config(None, ["model.arch=nope"])


@pytest.mark.slow
def test_a_notebook_session_from_raw_studies_to_detection_maps(tmp_path):
    from mri_fixtures import picai_phantoms, write_picai

    fp = fedprostate
    raw = write_picai(tmp_path / "raw", picai_phantoms(n=10, seed=3))
    report = fp.prepare(raw, tmp_path / "cache", crop=32, fractions=(0.5, 0.25, 0.25))
    assert report.kept == 10
    cfg = fp.load_config(None, ["model.arch=swin_test", "model.crop=32", "finetune.lora_r=2",
                                "train.steps=2", "train.batch_size=8", "fl.rounds=1",
                                "eval.n_boot=20"])  # fmt: skip
    summary = fp.centralize(cfg, tmp_path / "run", data=tmp_path / "cache")
    assert summary["status"] == "finished"
    metrics = fp.evaluate(tmp_path / "run", n_boot=20)
    assert metrics["n_findings"] > 0 and "ranking_score" in metrics["picai"]
    meta = fp.export(tmp_path / "run", onnx=False)
    model, loaded = fp.load_bundle(tmp_path / "run" / "bundle")
    assert loaded["weights_sha256"] == meta["weights_sha256"] and not model.training
    result = fp.predict(tmp_path / "run" / "bundle", raw, out=tmp_path / "pred",
                        detection_maps=True)  # fmt: skip
    assert len(result["patients"]) == 10 and len(result["detection_maps"]) == 10
    written = json.loads((tmp_path / "pred" / "predictions.json").read_text(encoding="utf-8"))
    assert written["detection_maps"][0]["detection_map"].endswith(".nii.gz")
    picai_eval = pytest.importorskip("picai_eval")
    scored = picai_eval.evaluate(
        y_det=[d["detection_map"] for d in result["detection_maps"]],
        y_true=[d["label"] for d in result["detection_maps"]],
        num_parallel_calls=1,
    )
    assert scored.num_cases == 10 and scored.num_lesions == 5
