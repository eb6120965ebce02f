"""The foundation benchmarks run end to end with tiny settings (tiny pool, tiny cache, swin_test,
CPU): foundation_probe.py, gpu_pretrain.py (its --tiny CPU check and the cache packer),
federated_pretrain.py (one small Flower simulation) and pretrain_vs_scratch.py --foundation (a
tiny `fedprostate pretrain` checkpoint, two one-round federated LoRA runs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprostate.data.cache import load_index
from fedprostate.data.unlabeled import UnlabeledPool, save_pool
from fl_fixtures import write_tiny_cache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fb")
    cache = write_tiny_cache(root / "cache", patients_per_site=15, seed=5)
    gen = torch.Generator().manual_seed(0)
    crops = torch.nn.functional.avg_pool2d(torch.randn(48, 3, 32, 32, generator=gen), 5, 1, 2)
    pool = UnlabeledPool(crops.numpy(), np.repeat(np.arange(12), 4).astype(np.int32),
                         [f"{10000 + i}_{20000 + i}" for i in range(12)],
                         {"crop": 32, "spacing": 0.5, "normalization": "test"})  # fmt: skip
    return save_pool(root / "pool.safetensors", pool), cache


def bench(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8")  # fmt: skip
    return proc


def test_foundation_probe_pretrains_probes_and_reuses_its_checkpoint(data, tmp_path):
    pool, cache = data
    args = ["--pool", pool, "--cache", cache, "--methods", "dino", "--epochs", "1",
            "--batch-size", "8", "--max-crops", "24", "--n-boot", "20", "--quiet",
            "--out", tmp_path / "fp"]  # fmt: skip
    proc = bench("foundation_probe.py", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "random init" in proc.stdout and "linear" in proc.stdout
    res = json.loads((tmp_path / "fp" / "results.json").read_text(encoding="utf-8"))
    assert res["dino"]["pretrain"]["n_crops"] == 24 and res["dino"]["pretrain"]["img_per_s"] > 0
    probe = res["dino"]["probe"]
    assert probe["n_findings"] == {"train": 18, "val": 6, "test": 21}
    assert {"pretrained", "random", "delta"} <= set(probe["linear"])
    ckpt = tmp_path / "fp" / "dino.safetensors"
    stamp = ckpt.stat().st_mtime_ns
    assert bench("foundation_probe.py", *args, cwd=tmp_path).returncode == 0
    assert ckpt.stat().st_mtime_ns == stamp  # reused, not trained again


def test_foundation_probe_refuses_a_pool_of_another_crop_size(data, tmp_path):
    pool, _ = data
    other = write_tiny_cache(tmp_path / "c64", patients_per_site=5, crop=64)
    proc = bench("foundation_probe.py", "--pool", pool, "--cache", other, "--out", tmp_path / "o",
                 cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "32 px crops" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_pack_cache_keeps_reader_findings_of_whole_train_patients(data, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_pretrain import pack_cache
    finally:
        sys.path.pop(0)
    _, cache = data
    out = pack_cache(cache, tmp_path / "packed", max_train=10)
    rows = load_index(out)
    assert {r["source"] for r in rows} == {"reader"}
    train = [r for r in rows if r["split"] == "train"]
    assert 0 < len(train) <= 10
    source = [r for r in load_index(cache) if r["source"] == "reader"]
    kept = {(r["site"], r["patient_id"]) for r in train}
    assert len(train) == sum(1 for r in source if (r["site"], r["patient_id"]) in kept)
    for split in ("val", "test"):  # validation and test untouched
        assert sum(r["split"] == split for r in rows) == sum(r["split"] == split for r in source)


def test_gpu_pretrain_tiny_runs_every_step_on_the_cpu(data, tmp_path):
    _, cache = data
    proc = bench("gpu_pretrain.py", "--tiny", "--device", "cpu", "--cache", cache,
                 "--out", tmp_path / "g", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "g" / "results.json").read_text(encoding="utf-8"))
    assert res["device"] == "cpu" and res["arch"] == "swin_test" and res["epochs"] >= 1
    assert res["studies"] == 4 and res["crops"] == 16  # 4 unlabeled studies x 4 crops
    assert res["img_per_s"] > 0 and 0 <= res["probe"]["linear"]["pretrained"]["test_auroc"] <= 1
    assert (tmp_path / "g" / "swin_test_dino.safetensors").is_file()


@pytest.mark.slow
def test_federated_pretrain_benchmark_compares_federated_with_central(data, tmp_path):
    pool, cache = data
    proc = bench("federated_pretrain.py", "--pool", pool, "--cache", cache, "--sites", "3",
                 "--rounds", "1", "--batch-size", "8", "--n-boot", "20", "--out", tmp_path / "f",
                 cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "f" / "results.json").read_text(encoding="utf-8"))
    assert res["federated"]["pretrain"]["federated"] and res["central"]["pretrain"]["epochs"] == 1
    for probe in ("linear", "knn"):
        d = res["federated_minus_central"][probe]
        assert d["auroc_a"] == pytest.approx(
            res["central"]["probe"][probe]["pretrained"]["test_auroc"], abs=1e-4
        )
        assert d["auroc_b"] == pytest.approx(
            res["federated"]["probe"][probe]["pretrained"]["test_auroc"], abs=1e-4
        )
    assert "federated − central" in proc.stdout


@pytest.mark.slow
def test_pretrain_vs_scratch_fine_tunes_from_the_given_foundation_and_from_random_init(
    data, tmp_path
):
    """LoRA from a `fedprostate pretrain` DINO checkpoint vs LoRA on the same architecture with
    random frozen weights: the table names the loaded foundation (file, sha256), the foundation
    arm trained on that checkpoint's backbone and the other on the seed's random init, both on
    the test split's reader findings only, and the target comes from validation only."""
    from typer.testing import CliRunner

    from fedprostate.cli import app
    from fedprostate.models.backbones import create_backbone
    from fedprostate.models.foundation import backbone_sha256, init_from_foundation

    pool, cache = data
    ckpt = tmp_path / "dino.safetensors"
    res = CliRunner().invoke(app, ["pretrain", "--data", str(pool), "--out", str(ckpt),
                                   "--arch", "swin_test", "--method", "dino", "--epochs", "1",
                                   "--batch-size", "8", "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = json.loads(ckpt.with_suffix(".json").read_text(encoding="utf-8"))
    out = tmp_path / "pvs"
    args = ["--foundation", ckpt, "--cache", cache, "--arms", "lora", "--rounds", "1",
            "--n-boot", "20", "--out", out]  # fmt: skip
    proc = bench("pretrain_vs_scratch.py", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "lora-pretrained" in table and "lora-scratch" in table
    assert f"dino.safetensors ({meta['sha256'][:12]})" in table
    assert "dino.safetensors" in proc.stdout and "random init" in proc.stdout
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    pre, scratch = res["arms"]["lora-pretrained"], res["arms"]["lora-scratch"]
    assert pre["foundation_sha256"] == meta["sha256"] and scratch["foundation"] == ""

    def backbone(foundation):  # the run's backbone before LoRA, built here independently
        torch.manual_seed(res["config"]["seed"])
        model = create_backbone("swin_test", crop=32, num_classes=2, in_chans=3)
        if foundation:
            init_from_foundation(model, foundation, "swin_test", 32, 3)
        return backbone_sha256(model)

    assert pre["backbone_sha256"] == backbone(ckpt)
    assert scratch["backbone_sha256"] == backbone(None) != pre["backbone_sha256"]
    readers = [r for r in load_index(cache) if r["split"] == "test" and r["source"] == "reader"]
    for arm in (pre, scratch):  # equal rounds, every round scored, reader findings only
        assert [r for r, _ in arm["val_curve"]] == [1]
        assert arm["n_test_findings"] == len(readers)
    cmp = res["comparisons"]["lora"]
    assert cmp["target"] == pytest.approx(0.95 * scratch["val_auroc"])  # validation only
    assert cmp["rounds_to_target"]["scratch"] == 1  # the random arm reaches 95% of its best
    assert cmp["delta_test_auroc"]["delta"] == pytest.approx(
        pre["test_auroc"]["estimate"] - scratch["test_auroc"]["estimate"], abs=1e-6
    )
    # finished runs are reused only for the same backbone and length
    again = bench("pretrain_vs_scratch.py", "--foundation", ckpt, "--cache", cache, "--arms", "lora",
                  "--rounds", "2", "--out", out, cwd=tmp_path)  # fmt: skip
    assert again.returncode == 2 and "give another --out" in again.stderr
