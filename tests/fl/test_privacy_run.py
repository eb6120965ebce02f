"""Whole server runs over an in-process Grid (fl.inproc: real ClientApps, no Ray): client-level DP
recorded per round, the sites' own evaluation limits, and SecAgg+ with a site dropping."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from safetensors.numpy import load_file
from typer.testing import CliRunner

from fedprostate.cli import app
from fedprostate.engine import setup
from fedprostate.fl import client as client_module
from fedprostate.fl import wire
from fedprostate.fl.client import site_limits
from fedprostate.fl.client_app import make_client_app
from fedprostate.fl.inproc import InProcessGrid
from fedprostate.fl.secagg import tolerance
from fedprostate.fl.server import run_server
from fedprostate.report.run_report import write_run_report
from fl_fixtures import tiny_config, write_tiny_cache


def _run(tmp_path, sites: int, node_config=None, drop=None, observe=None, **dotted):
    names = tuple(f"site{c}" for c in "ABCDE"[:sites])
    cache = write_tiny_cache(tmp_path / "cache", sites=names)
    cfg = tiny_config(cache, **{"fl.strategy": "fedavg", "out": str(tmp_path / "run"), **dotted})
    cfg = setup.resolve_privacy(cfg)
    part = node_config or (lambda i: {})
    grid = InProcessGrid(
        make_client_app(cfg.to_flat()),
        sites,
        node_config=lambda i: {"partition-id": i, "num-partitions": sites, **part(i)},
        drop=drop,
        observe=observe,
    )
    summary = run_server(grid, cfg)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    return summary, [r for r in rounds if r["round"] > 0]


def test_site_limits_come_from_the_node_config():
    assert site_limits({}) == (("val",), 0)
    assert site_limits({"eval-splits": "val, test", "max-evals": 4}) == (("val", "test"), 4)
    for bad in ({"eval-splits": "val,secret"}, {"max-evals": -1}, {"max-evals": "many"}):
        with pytest.raises(ValueError, match="eval-splits|max-evals"):
            site_limits(bad)


def test_a_site_refuses_to_train_past_the_patient_budget():
    from fedprostate.config import RunConfig
    from fedprostate.fl.client import PublicError, SiteContext, check_site_budget

    cfg = RunConfig.from_flat(
        {
            "fl.strategy": "fedavg",
            "finetune.lora_attn": False,
            "finetune.lora_mlp": True,
            "privacy.dp_sgd": True,
            "privacy.dp_sgd_noise": 1.0,
            "privacy.delta": 1e-3,
            "privacy.epsilon": 4.0,
            "train.steps": 2,
            "train.batch_size": 8,
        }
    )
    site = SiteContext(name="siteA", state_dir=None, uplink="fp32")
    check_site_budget(cfg, site, 1, n_train=400)  # q = 0.02: well within
    with pytest.raises(PublicError, match="privacy.epsilon = 4"):
        check_site_budget(cfg, site, 50, n_train=16)  # q = 0.5, 100 steps: far beyond


@pytest.mark.slow
def test_dp_epsilon_per_round_and_site_evaluation_cap(tmp_path):
    summary, rounds = _run(
        tmp_path,
        3,
        node_config=lambda i: {"max-evals": 1},
        **{"privacy.client": "server-fixed", "privacy.noise_multiplier": 1.0},
    )
    eps = [r["privacy"]["client"]["epsilon"] for r in rounds]
    assert len(eps) == 2 and 0 < eps[0] < eps[1]
    assert rounds[0]["privacy"]["client"]["epsilon_round"] == pytest.approx(eps[0])
    assert summary["privacy"]["client"]["epsilon"] == pytest.approx(eps[1])
    assert summary["privacy"]["delta"] == pytest.approx(1 / 18)  # 1 / training patients
    assert all(r["dp"]["replies"] == 3 and r["dp"]["noise_std"] > 0 for r in rounds)
    # each site answers one evaluation query per run (node config max-evals = 1)
    assert all("error" not in e for e in rounds[0]["fed_eval"])
    refused = [e["error"] for e in rounds[1]["fed_eval"]]
    assert len(refused) == 3 and all("max-evals" in e for e in refused)
    # the membership audit of this run: both attacks, per patient, next to the DP bound
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "run"), "--n-boot", "50", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "membership_audit.json").read_text())
    assert set(report["attacks"]) == {"loss", "confidence"}
    loss = report["attacks"]["loss"]
    assert loss["members"] == 18 and loss["non_members"] == 18  # 6 + 6 per site (val, test)
    assert loss["ci_low"] <= loss["auc"] <= loss["ci_high"]
    assert report["privacy"]["epsilon"] == pytest.approx(eps[1])
    assert 0.5 < report["privacy"]["auc_bound"] < 1
    # the run report shows the guarantee: the mechanism and the accountant's epsilon per round
    write_run_report(tmp_path / "run", n_boot=20)
    md = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    row = next(x for x in md.splitlines() if x.startswith("| client level (site) |"))
    assert "`server-fixed`" in row and row.rstrip(" |").endswith(f"{eps[1]:.3g}")
    assert f"| 2 | {eps[0]:.3g} | {eps[1]:.3g} |" in md


def _all_bytes(msg) -> bytes:
    """Every byte a message carries: tensor buffers, and the serialized config and metric
    records (SecAgg+ sends keys, shares and masked vectors as bytes in config records)."""
    arrays = [a.data for r in msg.content.array_records.values() for a in r.values()]
    records = [*msg.content.config_records.values(), *msg.content.metric_records.values()]
    return b"".join(arrays + [r.deflate() for r in records])


@pytest.mark.slow
def test_secagg_server_never_holds_a_site_update_and_survives_a_drop(tmp_path, monkeypatch):
    plain: dict[str, tuple[dict, float]] = {}
    real = client_module.train_round  # the ClientApp calls it through the module (lazily)

    def spy(cfg, site, *args, **kwargs):
        out, metrics = real(cfg, site, *args, **kwargs)
        plain[site.name] = ({k: v.copy() for k, v in out.items()}, metrics["num-examples"])
        return out, metrics

    monkeypatch.setattr(client_module, "train_round", spy)
    upstream: list[bytes] = []

    def observe(direction, msg):
        if direction == "up" and msg.has_content():
            upstream.append(_all_bytes(msg))

    def drop(node, msg):  # node 105 (siteE) goes silent after sharing its keys
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS, {})
        return node == 105 and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS

    _, rounds = _run(
        tmp_path, 5, drop=drop, observe=observe, **{"fl.secure_aggregation": True, "fl.rounds": 1}
    )
    (entry,) = rounds
    survivors = [c["site"] for c in entry["clients"]]
    assert survivors == ["siteA", "siteB", "siteC", "siteD"] and "siteE" not in plain
    assert entry["secagg"]["sites_in_sum"] == 4
    # no upstream message carries any window of a site's plaintext update
    for name, (tensors, _) in plain.items():
        largest = max(tensors.values(), key=lambda v: v.size)
        probe = np.ascontiguousarray(largest, np.float32).tobytes()[64:96]
        assert probe in _all_bytes(_as_reply(tensors))  # the search finds plaintext when sent
        assert not any(probe in blob for blob in upstream), name
    # the unmasked aggregate is FedAvg of the four survivors within the quantization tolerance
    weights = [plain[s][1] for s in survivors]
    names = sorted(plain[survivors[0]][0])
    expected = {
        k: sum(w * plain[s][0][k] for s, w in zip(survivors, weights, strict=False)) / sum(weights)
        for k in names
    }
    got = load_file(str(tmp_path / "run" / "checkpoints" / "round_0001.safetensors"))
    max_abs = max(float(np.abs(plain[s][0][k]).max()) for s in survivors for k in names)
    tol = tolerance(weights, max(v for _, v in plain.values()), max_abs)
    worst = max(float(np.abs(got[k] - expected[k]).max()) for k in names)
    assert worst <= tol, (worst, tol)
    assert entry["clients"][0]["bytes_up"] > 0


@pytest.mark.slow
def test_secagg_stages_run_in_the_warm_site_processes(tmp_path):
    """Deployment with warm site processes: every SecAgg+ stage (keys, shares, masking, unmasking)
    runs in the site's warm process, its keys and shares crossing back in the node state."""
    state = tmp_path / "state"
    _, rounds = _run(
        tmp_path,
        3,
        node_config=lambda i: {"warm-seconds": 120.0, "state-dir": str(state)},
        **{"fl.secure_aggregation": True, "fl.rounds": 1},
    )
    (entry,) = rounds
    assert entry["secagg"]["sites_in_sum"] == 3
    for site in ("siteA", "siteB", "siteC"):
        log = (state / site / "warm.log").read_text(encoding="utf-8")
        assert "warm process: message round" in log, site  # the chain ran there
    got = load_file(str(tmp_path / "run" / "checkpoints" / "round_0001.safetensors"))
    assert all(np.isfinite(v).all() for v in got.values())


def _as_reply(tensors):
    from flwr.app import Message, RecordDict

    return Message(
        RecordDict({"arrays": wire.to_record(tensors)}), dst_node_id=1, message_type="train"
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["client-fixed", "local"])
def test_site_side_dp_clips_and_noises_before_the_update_leaves(tmp_path, mode):
    """What crosses the wire from a site: with ``client-fixed`` its update (reply - the global it
    received) has exactly the clipping norm C (the unclipped LoRA update is far larger); with
    ``local`` the site also adds Gaussian noise of std z*2C per coordinate, so the update is far
    outside the C-ball. The accountant records epsilon per round in both modes."""
    clip = 1e-3
    received: dict[int, dict] = {}
    pairs: list[tuple[dict, dict]] = []

    def observe(direction, msg):
        if msg.metadata.message_type != "train" or not msg.has_content():
            return
        record = msg.content.array_records.get("arrays")
        if record is None:
            return
        tensors = wire.from_record(record)
        if direction == "down":
            received[msg.metadata.dst_node_id] = tensors
        else:
            pairs.append((received[msg.metadata.src_node_id], tensors))

    _, rounds = _run(
        tmp_path,
        3,
        observe=observe,
        **{"privacy.client": mode, "privacy.clip_norm": clip, "privacy.noise_multiplier": 1.0},
    )
    norms = [
        float(np.sqrt(sum(((up[k] - down[k]).astype(np.float64) ** 2).sum() for k in down)))
        for down, up in pairs
    ]
    assert len(norms) == 6  # 3 sites x 2 rounds
    if mode == "client-fixed":
        assert all(abs(n - clip) <= 1e-3 * clip for n in norms), norms
    else:
        size = sum(v.size for v in pairs[0][0].values())
        expected = 2 * clip * 1.0 * np.sqrt(size)  # the noise alone: std z*2C, `size` coordinates
        assert all(0.8 * expected < n < 1.2 * expected for n in norms), (norms, expected)
    eps = [r["privacy"]["client"]["epsilon"] for r in rounds]
    assert len(eps) == 2 and 0 < eps[0] < eps[1]
