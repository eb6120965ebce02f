"""The accountant (engine.privacy) and the privacy configuration's refusals."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("opacus")

from fedprostate.config import ConfigError, RunConfig  # noqa: E402
from fedprostate.engine import privacy  # noqa: E402


def _cfg(**dotted) -> RunConfig:
    base = {"fl.strategy": "fedavg", "fl.rounds": 4, "privacy.delta": 1e-3}
    return RunConfig.from_flat({**base, **dotted})


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    one = privacy.epsilon(1.0, 1.0, 1, 1e-3)
    four = privacy.epsilon(1.0, 1.0, 4, 1e-3)
    assert 0 < one < four < 4 * one  # RDP composition beats the linear sum
    assert privacy.epsilon(2.0, 1.0, 4, 1e-3) < four
    assert privacy.epsilon(0.0, 1.0, 4, 1e-3) == math.inf
    assert privacy.epsilon(1.0, 1.0, 0, 1e-3) == 0.0


def test_round_report_per_round_and_cumulative():
    cfg = _cfg(**{"privacy.client": "server-fixed", "privacy.noise_multiplier": 1.0})
    r1 = privacy.round_report(cfg, {"a": 10}, 1)["client"]
    r3 = privacy.round_report(cfg, {"a": 10}, 3)["client"]
    assert r1["epsilon_round"] == r3["epsilon_round"] == r1["epsilon"]
    assert r3["epsilon"] > r1["epsilon"]


def test_patient_level_uses_the_site_with_the_largest_epsilon():
    mlp_lora = {"finetune.lora_attn": False, "finetune.lora_mlp": True}
    cfg = _cfg(
        **{"privacy.dp_sgd": True, "privacy.dp_sgd_noise": 1.0, "train.batch_size": 8, **mlp_lora}
    )
    report = privacy.round_report(cfg, {"small": 16, "large": 400}, 2)["patient"]
    # q = 8/16 at the small site vs 8/400: less amplification, larger epsilon
    assert report["worst_site"] == "small"
    assert report["per_site"]["small"] > report["per_site"]["large"]


def test_a_plan_over_budget_is_refused_naming_the_key_and_the_noise_that_fits():
    cfg = _cfg(
        **{"privacy.client": "server-fixed", "privacy.noise_multiplier": 0.5, "privacy.epsilon": 3}
    )
    with pytest.raises(privacy.PrivacyBudgetError, match="privacy.noise_multiplier") as err:
        privacy.check_plan(cfg, {"a": 10})
    need = float(str(err.value).rsplit(" ", 1)[-1])
    fits = cfg.replace(**{"privacy.noise_multiplier": need})
    assert privacy.check_plan(fits, {"a": 10})["client"]["epsilon"] <= 3


def test_group_privacy_formula():
    eps, delta = privacy.group_privacy(0.5, 1e-5, 3)
    assert eps == 1.5
    assert delta == pytest.approx(3 * math.exp(1.0) * 1e-5)


@pytest.mark.parametrize(
    ("dotted", "key"),
    [
        ({"privacy.client": "server-fixed", "privacy.epsilon": 8}, "privacy.noise_multiplier"),
        ({"privacy.dp_sgd": True, "privacy.epsilon": 8}, "privacy.dp_sgd_noise"),
        ({"privacy.epsilon": 8}, "privacy.epsilon"),
        ({"privacy.dp_sgd": True, "privacy.dp_sgd_noise": 1.0}, "finetune.lora_attn"),
        ({"privacy.client": "server-fixed", "fl.strategy": "fedadam"}, "privacy.client"),
        ({"fl.secure_aggregation": True, "fl.strategy": "krum"}, "fl.secure_aggregation"),
        ({"privacy.client": "bogus"}, "privacy.client"),
        ({"fl.min_sites": 0}, "fl.min_sites"),
    ],
)
def test_bad_privacy_config_names_the_key(dotted, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        RunConfig.from_flat({"fl.strategy": "fedavg", **dotted})
