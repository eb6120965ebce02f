"""The foundation benchmarks run end to end with tiny settings (tiny pool, tiny cache, swin_test,
CPU): foundation_probe.py, gpu_pretrain.py (its --tiny CPU check and the cache packer) and
federated_pretrain.py (one small Flower simulation)."""

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
