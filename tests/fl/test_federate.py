"""Flower simulation end to end: outputs, per-site codecs and byte accounting, resume after a kill."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedprostate.compress import delta
from fedprostate.compress.codecs import CodecSpec
from fedprostate.fl import wire
from fedprostate.runs.federated import federate
from fl_fixtures import tiny_config, write_tiny_cache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_tiny_cache(tmp_path_factory.mktemp("fedcache"))


def test_mixed_site_codecs_outputs_and_bytes(cache, tmp_path):
    cfg = tiny_config(
        cache,
        **{
            "compress.site_codecs": "siteA=int4:block=64;siteC=int8",
            "compress.uplink": "fp32",
            "compress.error_feedback": True,
            "fl.rounds": 2,
        },
    )
    run = tmp_path / "run"
    summary = federate(cfg, run)
    rounds = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    n = summary["communicated_params"]
    shapes = {k: v.shape for k, v in load_file(str(run / "model.safetensors")).items()}
    expected = {}  # bytes each codec must put on the wire for these shapes (values don't matter)
    for site, codec in (("siteA", "int4:block=64"), ("siteB", "fp32"), ("siteC", "int8")):
        ref = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
        cur = {k: np.ones(s, np.float32) for k, s in shapes.items()}
        expected[site] = _wire_bytes(
            delta.pack_uplink(cur, ref, CodecSpec.parse(codec), np.random.default_rng(0))
        )
    for entry in rounds[1:]:
        by_site = {c["site"]: c for c in entry["clients"]}
        assert set(by_site) == {"siteA", "siteB", "siteC"}
        assert by_site["siteA"]["codec"].startswith("int4") and by_site["siteB"]["codec"] == "fp32"
        fp32, int8, int4 = (by_site[s]["bytes_up"] for s in ("siteB", "siteC", "siteA"))
        assert 4 * n <= fp32 <= 4 * n + 200 * len(shapes)  # raw tensors + header/key per array
        assert {s: by_site[s]["bytes_up"] for s in expected} == expected
        assert n / 2 < int4 < int8 < fp32  # codes packed two per byte (+ scales and headers)
        assert all(c["bytes_down"] > 0 and c["num-examples"] > 0 for c in entry["clients"])
        assert {e["site"] for e in entry["fed_eval"]} == {"siteA", "siteB", "siteC"}
    assert summary["uplink_mb_per_site"]["siteA"] < summary["uplink_mb_per_site"]["siteB"]
    # Best round is chosen on validation, and its test AUROC is the one reported.
    scored = [r for r in rounds if r["round"] > 0]
    best = max(scored, key=lambda r: r["val"]["auroc"])
    assert summary["best_round"] == best["round"]
    assert summary["test_auroc"] == pytest.approx(best["test"]["auroc"])
    for split in ("val", "test"):
        for tag in ("best", "last"):
            with (run / f"predictions_{split}_{tag}.csv").open(encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            assert rows and {"site", "patient_id", "finding_id", "source", "label", "score"} <= set(
                rows[0]
            )
    model = load_file(str(run / "model.safetensors"))
    assert sum(v.size for v in model.values()) == n
    assert all(v.dtype == np.float32 for v in model.values())
    # Error feedback keeps a residual per lossy site, per round, in the site's own state folder.
    assert sorted(p.name for p in (run / "client_state" / "siteA").glob("ef_*")) == [
        "ef_round0001.safetensors",
        "ef_round0002.safetensors",
    ]
    assert not list((run / "client_state" / "siteB").glob("ef_*"))
    assert (run / "checkpoints" / "round_0002_strategy.safetensors").exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fedprostate.cli import app; app()", *args]


def _final(run: Path) -> dict:
    """The last round's global tensors (model.safetensors holds the validation-chosen round)."""
    last = sorted((run / "checkpoints").glob("round_[0-9][0-9][0-9][0-9].safetensors"))[-1]
    return load_file(str(last))


def test_resume_after_kill_matches_uninterrupted_run(cache, tmp_path):
    overrides = [
        "--set",
        f"data.cache={cache}",
        "--set",
        "model.arch=swin_test",
        "--set",
        "model.crop=32",
        "--set",
        "finetune.lora_r=2",
        "--set",
        "train.steps=6",
        "--set",
        "train.batch_size=8",
        "--set",
        "fl.rounds=3",
        "--set",
        "fl.server_lr=0.05",
        # 2 of the 3 sites train each round: the resumed run must sample the same ones
        "--set",
        "fl.fraction_train=0.5",
        "--set",
        "fl.min_sites=2",
    ]
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    full = tmp_path / "full"
    subprocess.run(
        _cli("federate", *overrides, "--out", str(full)),
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli("federate", *overrides, "--out", str(killed)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "round_0001.json").exists():
        assert time.time() < deadline and proc.poll() is None, "run ended before round 1"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(
        int(p.stem.split("_")[1]) for p in (killed / "checkpoints").glob("round_*[0-9].json")
    )
    assert done and done[-1] < 3, f"the kill came too late to test anything: {done}"
    k = done[-1]
    no_adam = tmp_path / "no_adam"
    shutil.copytree(killed, no_adam)

    subprocess.run(
        _cli("federate", "--resume", str(killed)),
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    rounds = [
        json.loads(line)["round"]
        for line in (killed / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert rounds == [0, 1, 2, 3]  # no round twice, none missing
    assert _sampled(killed) == _sampled(full)
    assert all(len(sites) == 2 for sites in _sampled(full))
    resumed_log = json.loads((killed / "summary.json").read_text(encoding="utf-8"))
    assert resumed_log["rounds"] == 3
    a, b = _final(full), _final(killed)
    assert set(a) == set(b)
    assert max(float(np.abs(a[key] - b[key]).max()) for key in a) <= 1e-6

    for p in (no_adam / "checkpoints").glob("*_strategy.safetensors"):
        p.unlink()  # checkpoints as if written without FedAdam's state (not damaged ones)
        meta = p.with_name(p.name.replace("_strategy.safetensors", ".json"))
        record = json.loads(meta.read_text(encoding="utf-8"))
        record.pop("strategy_sha256", None)
        meta.write_text(json.dumps(record), encoding="utf-8")
    subprocess.run(
        _cli("federate", "--resume", str(no_adam)),
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    c = _final(no_adam)
    assert max(float(np.abs(a[key] - c[key]).max()) for key in a) > 1e-4, (
        f"dropping FedAdam's moments after round {k} must change the result"
    )


def _sampled(run: Path) -> list[list[str]]:
    """The sites whose training replies each round aggregated."""
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    return [sorted(c["site"] for c in e["clients"]) for e in entries if e["round"] > 0]


def _wire_bytes(arrays) -> int:
    """Bytes Flower counts for these arrays (data + NumPy headers + key names)."""
    return wire.to_record(arrays).count_bytes()
