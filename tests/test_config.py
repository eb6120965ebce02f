from pathlib import Path

import pytest

from fedprostate.config import RunConfig


def test_defaults_are_the_reference_arm():
    cfg = RunConfig()
    assert (cfg.model.arch, cfg.finetune.method, cfg.fl.strategy, cfg.compress.uplink) == (
        "swin_tiny",
        "lora",
        "fedadam",
        "fp32",
    )


def test_flat_round_trip_and_types():
    cfg = RunConfig.from_flat(
        {
            "fl.rounds": "7",
            "train.lr": "0.01",
            "train.augment": "false",
            "seed": 3,
            "compress.uplink": "int4:block=64",
        }
    )
    assert cfg.fl.rounds == 7 and isinstance(cfg.fl.rounds, int)
    assert cfg.train.lr == pytest.approx(0.01) and cfg.train.augment is False and cfg.seed == 3
    assert RunConfig.from_flat(cfg.to_flat()) == cfg


def test_toml_file_and_set_overrides(tmp_path: Path):
    path = tmp_path / "run.toml"
    path.write_text(RunConfig().replace(**{"fl.strategy": "fedavg"}).to_toml(), encoding="utf-8")
    cfg = RunConfig.load(path, ["fl.rounds=3", "finetune.method=ffa-lora", "train.lr=5e-4"])
    assert (cfg.fl.strategy, cfg.fl.rounds, cfg.finetune.method) == ("fedavg", 3, "ffa-lora")
    assert cfg.train.lr == pytest.approx(5e-4)


@pytest.mark.parametrize(
    "flat, message",
    [
        ({"fl.roundz": 3}, "unknown config key 'fl.roundz'"),
        ({"nope.x": 1}, "unknown config group"),
        ({"fl.rounds": "three"}, "cannot read 'three' as int"),
        ({"fl.strategy": "fedsgd"}, "fl.strategy"),
        ({"train.lr": -1}, "train.lr must be > 0"),
        ({"data.partition": "loso"}, "holdout_site"),
        ({"train.augment": "maybe"}, "as bool"),
    ],
)
def test_bad_values_are_clear_errors(flat, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_flat(flat)


def test_set_needs_key_value():
    with pytest.raises(ValueError, match="key=value"):
        RunConfig.load(None, ["fl.rounds"])
