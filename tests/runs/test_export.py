"""Model bundle export: merged weights, ONNX parity with the unmerged peft model, peft-free loading."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fedprostate.data.cache import CropDataset, load_index
from fedprostate.engine.setup import build_model, load_communicated
from fedprostate.eval.calibration import apply_temperature
from fedprostate.eval.metrics import choose_threshold
from fedprostate.models.backbones import create_backbone, input_conv_key
from fedprostate.models.bundle import BundleError, load_bundle
from fedprostate.records import predictions
from fedprostate.runs.export import export_run, onnx_logits
from fedprostate.runs.pooled import centralize
from fl_fixtures import tiny_config, write_tiny_cache


def _run_and_export(root: Path, method: str, formats) -> tuple[Path, Path, object]:
    cache = root / "cache"
    if not cache.exists():
        write_tiny_cache(cache)
    cfg = tiny_config(cache, **{"fl.rounds": 1, "finetune.method": method, "train.steps": 3})
    run = root / f"run_{method}"
    centralize(cfg, run)
    export_run(run, root / f"bundle_{method}", formats=formats, n_boot=20)
    return run, root / f"bundle_{method}", cfg


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    return _run_and_export(tmp_path_factory.mktemp("export"), "lora", ("bundle", "onnx"))


def _unmerged(run: Path, cfg) -> torch.nn.Module:
    bundle = build_model(cfg, fresh=True)
    load_communicated(bundle.ft, load_file(str(run / "model.safetensors")))
    return bundle.ft.model.eval()


def _cached_crops(cfg, n: int = 7) -> torch.Tensor:
    rows = load_index(cfg.data.cache)[:n]
    ds = CropDataset(cfg.data.cache, rows)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def test_onnx_matches_unmerged_peft_model_with_dynamic_batch(lora):
    run, bundle, cfg = lora
    peft_model = _unmerged(run, cfg)
    assert any("lora_A" in k for k in peft_model.state_dict())  # really the unmerged model
    for x in (_cached_crops(cfg, 1), _cached_crops(cfg, 7)):
        with torch.no_grad():
            expected = peft_model(x).numpy()
        got = onnx_logits(bundle / "model.onnx", x.numpy())
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4
    meta = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    assert meta["onnx"]["opset"] >= 17
    assert meta["onnx"]["parity_max_abs_logit_diff_vs_unmerged"] <= 1e-4


def test_bundle_metadata_threshold_hash_and_card(lora):
    run, bundle, cfg = lora
    model, meta = load_bundle(bundle)
    assert not any("lora" in k for k in model.state_dict())  # merged: plain timm keys
    assert meta["arch"] == "swin_test" and meta["crop"] == 32 and meta["spacing"] == 0.5
    assert meta["channels"] == ["t2w", "adc", "hbv"]
    # the threshold: Youden on the validation findings, after the run's temperature (fitted on
    # validation) — never on test, never on sampled tissue
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    temperature = summary["calibration"]["temperature"]
    assert meta["temperature"] == pytest.approx(temperature) and temperature != 1.0
    val = [r for r in predictions.read(run / "predictions_val_best.csv") if r["source"] == "reader"]
    calibrated = apply_temperature([r["score"] for r in val], temperature)
    expected = choose_threshold([r["label"] for r in val], calibrated, "youden")
    assert meta["threshold"] == pytest.approx(expected)
    assert meta["foundation_sha256"] == summary["foundation_sha256"]
    card = (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Not for clinical use" in card and "siteA" in card
    auroc = meta["test_auroc"]["estimate"]
    assert f"{auroc:.3f}" in card and "95% CI" in card
    x = _cached_crops(cfg)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), _unmerged(run, cfg)(x).numpy(), atol=1e-5)


def test_running_a_bundle_does_not_import_peft(lora):
    _, bundle, cfg = lora
    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "peft" or name.startswith("peft."):
                    raise ImportError("peft is blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np, torch
        from fedprostate.models.bundle import load_bundle, load_teacher, predict_proba
        model, meta = load_bundle({str(bundle)!r})
        x = np.random.default_rng(0).normal(0.5, 0.2, (3, 3, 32, 32)).astype(np.float32)
        p = predict_proba(model, x)
        load_teacher({str(bundle)!r})
        import fedprostate.runs.predict
        assert not any(m == "peft" or m.startswith("peft.") for m in sys.modules), "peft loaded"
        print("OK", p.round(6).tolist())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK")
    # the block really works: importing the peft-based fine-tuning code fails under it
    blocked = code.replace(
        "from fedprostate.models.bundle",
        "import fedprostate.models.finetune\nfrom fedprostate.models.bundle",
    )
    assert subprocess.run([sys.executable, "-c", blocked], capture_output=True).returncode != 0


def test_tampered_weights_are_refused(lora, tmp_path):
    _, bundle, _ = lora
    copy = tmp_path / "b"
    copy.mkdir()
    for f in ("bundle.json", "model.safetensors"):
        (copy / f).write_bytes((bundle / f).read_bytes())
    state = load_file(str(copy / "model.safetensors"))
    key = next(iter(state))
    state[key] = state[key] + 1.0
    from safetensors.numpy import save_file

    save_file(state, str(copy / "model.safetensors"))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(copy)
    (copy / "bundle.json").unlink()
    with pytest.raises(BundleError, match="bundle.json"):
        load_bundle(copy)


def test_adapter_bundle_keeps_adapters_without_peft(tmp_path):
    run, bundle, cfg = _run_and_export(tmp_path, "adapter", ("bundle",))
    model, meta = load_bundle(bundle)
    assert meta["adapter"] == {
        "dim": cfg.finetune.adapter_dim,
        "blocks": cfg.finetune.adapter_blocks,
    }
    assert any(".adapter.up." in k for k in model.state_dict())
    x = _cached_crops(cfg)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), _unmerged(run, cfg)(x).numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenetv3_small_100", "efficientnet_b0", "swin_mini", "student_test"]
)
def test_student_backbones_build_at_small_crops(name):
    model = create_backbone(name, crop=32).eval()
    assert input_conv_key(name) in model.state_dict()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)


def _values(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _values(v)
    elif isinstance(node, list):
        for v in node:
            yield from _values(v)
    else:
        yield node


def test_bundle_hash_covers_threshold_and_preprocessing_and_no_absolute_paths(lora, tmp_path):
    """Finding 6: bundles were checked only against a hash in the same folder that covered the
    weights alone; bundle.json carried the run's absolute path."""
    run, bundle, _ = lora
    meta = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    strings = [v for v in _values(meta) if isinstance(v, str)]
    assert not [v for v in strings if v.startswith("/") or str(run.parent) in v]
    assert meta["source_run"] == run.name
    assert meta["onnx"]["sha256"] and meta["bundle_sha256"]
    load_bundle(bundle, expected_sha256=meta["bundle_sha256"])  # the published hash
    with pytest.raises(BundleError, match="is not the expected"):
        load_bundle(bundle, expected_sha256="0" * 64)
    for edit in (
        lambda m: m.update(threshold=0.01),
        lambda m: m["preprocessing"].update(clip=[-100.0, 100.0]),
    ):
        copy = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        copy.mkdir()
        (copy / "model.safetensors").write_bytes((bundle / "model.safetensors").read_bytes())
        edited = json.loads(json.dumps(meta))
        edit(edited)
        (copy / "bundle.json").write_text(json.dumps(edited), encoding="utf-8")
        with pytest.raises(BundleError, match="bundle_sha256"):
            load_bundle(copy)
