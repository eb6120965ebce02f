"""Foundation evaluation: probes on reader findings only, a checkpoint vs random init, the CLI
writes the result into the checkpoint's JSON and figure."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedprostate.engine.probe import (
    evaluate_foundation,
    knn_scores,
    linear_probe,
    probe_rows,
)
from fedprostate.eval.metrics import auroc
from fedprostate.models.backbones import create_backbone
from fedprostate.models.foundation import FoundationError, save_checkpoint
from fl_fixtures import write_tiny_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_tiny_cache(tmp_path_factory.mktemp("c") / "cache", patients_per_site=15, seed=5)


def seeded_backbone(seed, crop=32):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_backbone("swin_test", crop=crop)


def test_probes_fit_on_train_choose_on_val_and_separate_informative_features():
    rng = np.random.default_rng(0)
    y = {s: rng.integers(0, 2, n) for s, n in (("train", 200), ("val", 80), ("test", 80))}
    feats = {s: np.c_[y[s] + rng.normal(0, 0.7, len(y[s])), rng.normal(size=(len(y[s]), 5))]
             for s in y}  # fmt: skip
    lin = linear_probe(feats, y)
    assert lin["C"] in (1e-3, 1e-2, 1e-1, 1.0) and auroc(y["test"], lin["test"]) > 0.8
    knn = knn_scores(feats["train"], y["train"], feats["test"], k=20)
    assert 0 <= knn.min() and knn.max() <= 1 and auroc(y["test"], knn) > 0.7


def test_probe_rows_are_reader_findings_never_sampled_tissue(cache):
    rows = probe_rows(cache)
    assert all(r["source"] == "reader" for part in rows.values() for r in part)
    assert sum(len(p) for p in rows.values()) == 45  # one finding per patient, 45 patients


def test_the_random_init_itself_scores_exactly_like_the_baseline(cache, tmp_path):
    ckpt = tmp_path / "same.safetensors"
    save_checkpoint(
        ckpt, seeded_backbone(0), {"arch": "swin_test", "crop": 32, "normalization": "z"}
    )
    report = evaluate_foundation(ckpt, cache, seed=0, n_boot=50)
    for probe in ("linear", "knn"):
        assert report[probe]["pretrained"] == report[probe]["random"]
        assert report[probe]["delta"]["delta"] == 0
    other = tmp_path / "other.safetensors"
    save_checkpoint(
        other, seeded_backbone(5), {"arch": "swin_test", "crop": 32, "normalization": "z"}
    )
    assert evaluate_foundation(other, cache, seed=0, n_boot=50)["linear"]["delta"]["delta"] != 0
    assert report["n_findings"] == {"train": 18, "val": 6, "test": 21}


def test_a_checkpoint_of_another_crop_is_refused(cache, tmp_path):
    ckpt = tmp_path / "s64.safetensors"
    save_checkpoint(
        ckpt, seeded_backbone(0, 64), {"arch": "swin_test", "crop": 64, "normalization": "z"}
    )
    with pytest.raises(FoundationError, match="64 px crops.*32 px"):
        evaluate_foundation(ckpt, cache)


def test_foundation_eval_command_writes_json_and_figure(cache, tmp_path):
    from fedprostate.cli import app

    ckpt = tmp_path / "f.safetensors"
    save_checkpoint(ckpt, seeded_backbone(3), {"arch": "swin_test", "crop": 32, "normalization": "z",
                    "loss_history": [2.0, 1.5], "pretrain": {"method": "dino"}})  # fmt: skip
    result = CliRunner().invoke(app, ["foundation", "eval", str(ckpt), "--data", str(cache),
                                      "--n-boot", "50"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "linear" in result.output and "Δ vs random" in result.output
    meta = json.loads(ckpt.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["loss_history"] == [2.0, 1.5]  # kept
    probe = meta["foundation_eval"]
    assert set(probe) >= {"linear", "knn", "n_findings", "cache"}
    assert probe["linear"]["pretrained"]["test_low"] <= probe["linear"]["pretrained"]["test_auroc"]
    assert ckpt.with_suffix(".loss.png").stat().st_size > 0


def test_compare_checkpoints_is_b_minus_a_on_the_same_test_findings(cache, tmp_path):
    from fedprostate.engine.probe import compare_checkpoints

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path, seed in ((a, 0), (b, 5)):
        meta = {"arch": "swin_test", "crop": 32, "normalization": "z"}
        save_checkpoint(path, seeded_backbone(seed), meta)
    cmp = compare_checkpoints(a, b, cache, n_boot=50)
    for probe in ("linear", "knn"):
        alone_a = evaluate_foundation(a, cache, n_boot=50)[probe]["pretrained"]["test_auroc"]
        alone_b = evaluate_foundation(b, cache, n_boot=50)[probe]["pretrained"]["test_auroc"]
        assert cmp[probe]["auroc_a"] == pytest.approx(alone_a, abs=1e-4)
        assert cmp[probe]["auroc_b"] == pytest.approx(alone_b, abs=1e-4)
        assert cmp[probe]["delta"] == pytest.approx(alone_b - alone_a, abs=2e-4)
        assert cmp[probe]["low"] <= cmp[probe]["delta"] <= cmp[probe]["high"]
    assert compare_checkpoints(a, a, cache, n_boot=50)["linear"]["delta"] == 0
