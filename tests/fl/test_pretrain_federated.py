"""Federated self-supervised pre-training: a site's round (plain function), the codecs, and one
small Flower simulation that ends with a foundation checkpoint."""

import json

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord

from fedprostate.compress import delta
from fedprostate.compress.codecs import CodecSpec
from fedprostate.config import RunConfig
from fedprostate.data.unlabeled import UnlabeledPool, save_pool
from fedprostate.fl.pretrain_site import (
    build_task,
    global_numpy,
    pretrain_round,
    site_crops,
    site_names,
    site_of_node,
)
from fedprostate.fl.replies import PRETRAIN_METRICS, metrics_problem
from fedprostate.models.foundation import load_foundation


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    crops = torch.nn.functional.avg_pool2d(torch.randn(48, 3, 32, 32, generator=gen), 5, 1, 2)
    pool = UnlabeledPool(crops.numpy(), np.repeat(np.arange(12), 4).astype(np.int32),
                         [f"{10000 + i}_{20000 + i}" for i in range(12)],
                         {"crop": 32, "spacing": 1.0, "normalization": "test"})  # fmt: skip
    return save_pool(tmp_path_factory.mktemp("pool") / "pool.safetensors", pool)


def config(pool, **dotted):
    base = {"pretrain.pool": str(pool), "pretrain.method": "dino", "pretrain.sites": 2,
            "model.arch": "swin_test", "model.crop": 32, "train.epochs": 1,
            "train.batch_size": 8, "train.lr": 1e-3, "fl.rounds": 2, "fl.strategy": "fedavg",
            "fl.min_train_nodes": 2, "fl.min_available_nodes": 2, "fl.min_sites": 2}  # fmt: skip
    return RunConfig.from_flat({**base, **dotted})


def test_sites_hold_disjoint_whole_studies_and_nodes_map_to_them(pool_file):
    cfg = config(pool_file)
    assert site_names(cfg) == ["site0", "site1"]
    sizes = [site_crops(cfg, s).shape[0] for s in site_names(cfg)]
    assert sum(sizes) == 48 and all(n % 4 == 0 and n > 0 for n in sizes)
    assert site_of_node(cfg, {"partition-id": 1}) == "site1"
    assert site_of_node(cfg, {"site": "site0"}) == "site0"
    with pytest.raises(ValueError, match="partition-id 2"):
        site_of_node(cfg, {"partition-id": 2})


@pytest.mark.parametrize("codec", ["fp32", "int8"])
def test_a_site_round_trains_the_objective_and_sends_it_through_the_codec(pool_file, codec):
    cfg = config(pool_file)
    start = global_numpy(build_task(cfg))
    out, metrics = pretrain_round(cfg, "site0", codec, 1, start)
    assert metrics["num-examples"] == site_crops(cfg, "site0").shape[0] and metrics["steps"] > 0
    # what the pre-training server admits (no labels: no validation AUROC in the reply)
    assert metrics_problem(MetricRecord(metrics), PRETRAIN_METRICS) is None
    spec = CodecSpec.parse(codec)
    decoded = delta.unpack_uplink(out, spec, start)
    trained = global_numpy(build_task(cfg))  # the cached task now holds the site's weights
    assert set(decoded) == set(start)  # student, teacher, heads and DINO's centre travel
    changed = [k for k in start if not np.allclose(decoded[k], start[k])]
    assert any(k.startswith("backbone.") for k in changed)
    assert any(k.startswith("teacher_backbone.") for k in changed)
    for k in changed:
        assert np.allclose(decoded[k], trained[k], atol=0 if codec == "fp32" else 0.05)
    again, _ = pretrain_round(cfg, "site0", codec, 1, start)  # a redone round is identical
    assert all(np.array_equal(again[k], out[k]) for k in out)


@pytest.mark.slow
def test_pretrain_federated_command_writes_a_foundation(pool_file, tmp_path):
    from typer.testing import CliRunner

    from fedprostate.cli import app
    from fedprostate.runs.federated_pretrain import federate_pretrain, run_folder

    out = tmp_path / "fed.safetensors"
    result = CliRunner().invoke(app, [
        "pretrain", "--federated", "--data", str(pool_file), "--out", str(out), "--arch",
        "swin_test", "--method", "dino", "--epochs", "1", "--batch-size", "8", "--sites", "2",
        "--rounds", "2", "--set", "compress.uplink=int8", "--set", "fl.min_sites=2",
        "--no-progress", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.stdout
    summary = json.loads(text[text.rindex("\n{\n") + 1 if "\n{\n" in text else text.index("{") :])
    meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["pretrain"]["federated"] and meta["pretrain"]["sites"] == 2
    assert len(meta["round_history"]) == 2 and summary["total_mb"] > 0
    assert out.with_suffix(".loss.png").stat().st_size > 0
    rounds = [json.loads(x) for x in (run_folder(out) / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert {c["site"] for c in rounds[0]["clients"]} == {"site0", "site1"}
    for c in rounds[0]["clients"]:
        assert c["codec"].startswith("int8") and c["bytes_up"] < c["bytes_down"] / 3
    load_foundation(out, "swin_test", 32)  # the teacher backbone, loadable for fine-tuning
    with pytest.raises(ValueError, match="--resume continues it"):
        federate_pretrain(config(pool_file), out)
    with pytest.raises(ValueError, match="method 'dino'"):
        federate_pretrain(config(pool_file, **{"pretrain.method": "simclr"}), out, resume=True)
