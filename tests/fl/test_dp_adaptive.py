"""Adaptive clipping (``server-adaptive``, ``client-adaptive``) behind the project's hooks, with
fake replies whose update norms are known:

* the noise on the mean is z_update * C_used / m with the norm the round was clipped at, not the
  norm Flower already moved to for the next round (``fl.dp._NoiseAtTheNormUsed``);
* the norm moves against the fraction of clipped updates minus the target quantile, by exactly
  Andrew et al.'s geometric step, and the next round clips at the moved norm;
* the two noises actually drawn (update, and the count of clipped updates that steers the norm)
  compose to the multiplier z that the accountant charges: the norm's query is inside epsilon.

Flower draws every noise from NumPy's global generator: each test seeds it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedprostate.config import RunConfig
from fedprostate.engine import privacy
from fedprostate.fl import wire
from fedprostate.fl.dp import NORM_BIT
from fedprostate.fl.strategies import REPORT_KEY, make_strategy

SHAPES = {"blocks.0.lora_A": (2, 3), "head.weight": (4,)}
BIG = {"blocks.0.lora_A": (40, 50), "head.weight": (20000,)}  # enough noise draws for its std
MODES = ("server-adaptive", "client-adaptive")


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _strategy(mode: str, shapes=SHAPES, **dotted):
    cfg = RunConfig.from_flat(
        {"fl.strategy": "fedavg", "privacy.client": mode, "privacy.clip_norm": 1.0, **dotted}
    )
    strategy = make_strategy(cfg, num_clients=4)
    strategy.attach(shapes, "fp32", seed=0, foundation_sha="abc")
    zeros = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    strategy.reference = zeros
    strategy.current_arrays = dict(zeros)
    strategy.after_broadcast(zeros)
    return cfg, strategy


def _reply(node: int, value: float, clipped: bool, shapes=SHAPES) -> Message:
    """A site's update: every entry ``value`` (the global model is zero). With client-side
    clipping the site reports whether it clipped (Flower's ``adaptiveclipping_mod`` bit)."""
    sent = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=node,
        message_type="train",
    )
    metrics = {"num-examples": 10, "train-loss": 0.5, "val-auroc": 0.7, "val-n": 4, "steps": 2}
    metrics[NORM_BIT] = int(clipped)
    content = RecordDict(
        {
            "arrays": wire.to_record({k: np.full(s, value, np.float32) for k, s in shapes.items()}),
            "metrics": MetricRecord(metrics),
            REPORT_KEY: ConfigRecord({"site": f"site{node}", "codec": "fp32"}),
        }
    )
    return Message(content, reply_to=sent)


def _round(strategy, mode: str, values: list[float], clip: float, shapes=SHAPES):
    """One aggregation; the bit of each reply says whether its update exceeded ``clip``."""
    size = sum(math.prod(s) for s in shapes.values())
    replies = [
        _reply(i + 1, v, abs(v) * math.sqrt(size) > clip, shapes) for i, v in enumerate(values)
    ]
    if mode == "server-adaptive":  # the server clips and counts; sites send no bit
        for r in replies:
            del r.content["metrics"][NORM_BIT]
    arrays, _ = strategy.aggregate_train(1, replies)
    return wire.from_record(arrays)


@pytest.mark.parametrize("mode", MODES)
def test_noise_uses_the_norm_the_round_was_clipped_at(mode):
    np.random.seed(0)
    z, count_std, lr = 1.0, 1.0, 1.0
    cfg, strategy = _strategy(
        mode,
        BIG,
        **{
            "privacy.noise_multiplier": z,
            "privacy.clipped_count_stddev": count_std,
            "privacy.clip_lr": lr,
        },
    )
    size = sum(math.prod(s) for s in BIG.values())
    out = _round(strategy, mode, [0.05, 0.05, 0.05], 1.0, BIG)  # norm 7.2 each: all clipped
    dp = strategy.ledger.extra["dp"]
    used, moved = dp["clip_norm"], dp["next_clip_norm"]
    assert used == 1.0 and moved < 0.8  # every update clipped: the norm shrank for next round
    # the mean of three identical updates clipped to norm 1, each entry 1 / sqrt(size)
    noise = np.concatenate([out[k].ravel() for k in BIG]) - 1.0 / math.sqrt(size)
    z_update = (z**-2 - (2 * count_std) ** -2) ** -0.5  # Flower's raised update multiplier
    # mutant: noise with the moved norm (Flower's order) -> std 0.39 * moved, < 0.31 -> fails
    assert float(noise.std()) == pytest.approx(z_update * used / 3, rel=0.03)
    assert dp["noise_std"] == pytest.approx(z_update * used / 3)
    assert abs(float(noise.mean())) < 0.01  # the clipped mean itself is unbiased


@pytest.mark.parametrize("mode", MODES)
def test_the_norm_moves_against_the_clipped_fraction_minus_the_target(mode):
    # no noise (z = 0): Andrew et al.'s step exactly, C <- C exp(-lr (clipped fraction - q))
    cfg, strategy = _strategy(mode, **{"privacy.target_quantile": 0.25, "privacy.clip_lr": 0.2})
    norm = 1.0
    cases = [
        ([1.0, 1.0, 1.0, 1.0], 1.0),  # all clipped: shrinks by exp(-0.2 * 0.75)
        ([1e-3, 1e-3, 1e-3, 1e-3], 0.0),  # none clipped: grows by exp(0.2 * 0.25)
        ([1.0, 1e-3, 1e-3, 1e-3], 0.25),  # the target fraction: stays
    ]
    for values, fraction in cases:
        out = _round(strategy, mode, values, norm)
        dp = strategy.ledger.extra["dp"]
        assert dp["clip_norm"] == pytest.approx(norm)  # this round clipped at the current norm
        expected = norm * math.exp(-0.2 * (fraction - 0.25))
        # mutants: the sign of the step flipped, or the norm not moved -> fail
        assert dp["next_clip_norm"] == pytest.approx(expected, rel=1e-6), (values, fraction)
        if fraction == 1.0:  # each clipped update has the norm it was clipped at
            flat = np.concatenate([v.ravel() for v in out.values()])
            assert float(np.linalg.norm(flat)) == pytest.approx(norm, rel=1e-5)
        norm = expected
        assert strategy.reclip_norm() == (pytest.approx(norm) if mode.startswith("client") else 0)
    # the next round clips at the moved norm (e^-0.1 = 0.905), not at the configured 1.0
    out = _round(strategy, mode, [1.0, 1.0, 1.0, 1.0], norm)
    flat = np.concatenate([v.ravel() for v in out.values()])
    assert float(np.linalg.norm(flat)) == pytest.approx(norm, rel=1e-5) and norm < 0.95


@pytest.mark.parametrize("mode", MODES)
def test_the_accountant_charges_the_norm_query_too(mode):
    """Measure both noises Flower draws and compose them (Andrew et al. 2021, Thm 1: one
    Gaussian mechanism with z^-2 = z_update^-2 + (2 sigma_count)^-2): the accountant's epsilon
    must be that one's, above the update noise's alone."""
    np.random.seed(1)
    z, count_std, lr, delta = 1.0, 0.6, 0.5, 1e-3
    dotted = {
        "privacy.noise_multiplier": z,
        "privacy.clipped_count_stddev": count_std,
        "privacy.clip_lr": lr,
        "privacy.target_quantile": 0.5,
        "privacy.delta": delta,
    }
    cfg, strategy = _strategy(mode, BIG, **dotted)
    size = sum(math.prod(s) for s in BIG.values())
    out = _round(strategy, mode, [0.05, 0.05, 0.05], 1.0, BIG)
    noise = np.concatenate([out[k].ravel() for k in BIG]) - 1.0 / math.sqrt(size)
    z_update = float(noise.std()) * 3 / strategy.ledger.extra["dp"]["clip_norm"]
    # the count's noise, read back from how far the norm moved (every update clipped: count 3)
    _, small = _strategy(mode, **dotted)
    drawn = []
    for _ in range(600):
        small.dp.clipping_norm = 1.0
        _round(small, mode, [1.0, 1.0, 1.0], 1.0)
        fraction = 0.5 - math.log(small.ledger.extra["dp"]["next_clip_norm"]) / lr
        drawn.append(3 * fraction - 3)
    sigma_count = float(np.std(drawn))
    assert abs(float(np.mean(drawn))) < 0.1 and sigma_count == pytest.approx(count_std, rel=0.1)
    z_combined = (z_update**-2 + (2 * sigma_count) ** -2) ** -0.5
    assert z_update > 1.5 * z and z_combined == pytest.approx(z, rel=0.06)
    charged = privacy.round_report(cfg, {}, 3)["client"]["epsilon"]
    assert charged == pytest.approx(privacy.epsilon(z_combined, 1.0, 3, delta), rel=0.1)
    # mutant: the accountant charging only the update's noise -> ~half this epsilon -> fails
    assert privacy.epsilon(z_update, 1.0, 3, delta) < 0.7 * charged
