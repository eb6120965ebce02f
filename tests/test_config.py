"""The run configuration: every value checked when it loads, errors name key, value and choices."""

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedprostate.cli import app
from fedprostate.config import (
    ARCHS,
    METHODS,
    PARTITIONS,
    STRATEGIES,
    THRESHOLD_RULES,
    ConfigError,
    RunConfig,
    flatten,
)


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


def test_a_saved_config_of_any_method_loads_back(tmp_path: Path):
    """config.toml lists every key (defaults included): resume and export must read it."""
    for method in METHODS:
        cfg = RunConfig().replace(**{"finetune.method": method})
        path = tmp_path / f"{method}.toml"
        path.write_text(cfg.to_toml(), encoding="utf-8")
        assert RunConfig.load(path) == cfg


@pytest.mark.parametrize(
    "override, named",
    [
        # the typos from the layering issue: each one ran to the end before
        ("compress.uplink=int3", ["compress.uplink", "'int3'", "int8"]),
        ("finetune.method=lorra", ["finetune.method", "'lorra'", "ffa-lora"]),
        ("eval.threshold_rule=x", ["eval.threshold_rule", "'x'", "youden"]),
        ("compress.downlink=int9", ["compress.downlink", "'int9'"]),
        ("compress.site_codecs=siteA=int3", ["compress.site_codecs[siteA]", "'int3'"]),
        ("compress.site_codecs=siteA", ["compress.site_codecs", "SITE=CODEC"]),
        ("compress.site_codecs=a=int8;a=int4", ["names site 'a' twice"]),
        ("fl.strategy=fedsgd", ["fl.strategy", "'fedsgd'", "fedadam"]),
        ("data.partition=random", ["data.partition", "'random'", "dirichlet"]),
        ("model.arch=swin_tinny", ["model.arch", "'swin_tinny'", "swin_tiny"]),
        ("model.crop=48", ["model.crop", "48", "multiple of 32"]),
        ("train.device=gpu", ["train.device", "'gpu'", "cuda"]),
        ("train.lr=-1", ["train.lr", "-1", "> 0"]),
        ("fl.fraction_train=0", ["fl.fraction_train", "(0, 1]"]),
        ("fl.rounds=three", ["'fl.rounds'", "'three'", "int"]),
        ("train.augment=maybe", ["'train.augment'", "bool"]),
        ("fl.roundz=3", ["unknown config key 'fl.roundz'", "rounds"]),
        ("demo.sites=6", ["unknown config group 'demo'", "finetune"]),
        ("data.partition=loso", ["data.holdout_site"]),
        ("fl.strategy=fedprox", ["train.prox_mu"]),
        ("finetune.adapter_dim=32", ["finetune.adapter_dim", "'lora'"]),
        ("fl.client_gpus=-0.5", ["fl.client_gpus", "-0.5", ">= 0"]),
        ("fl.ray_address=a b", ["fl.ray_address", "host:port"]),
        ("train.precision=fp16", ["train.precision", "'fp16'", "bf16"]),
        ("finetune.lora_stages=5", ["finetune.lora_stages", "5", "0 (all) to 4"]),
        ("finetune.lora_r=4", None),  # LoRA keys with LoRA: fine
    ],
)
def test_bad_values_are_refused_naming_key_value_and_choices(override, named):
    if named is None:
        RunConfig.load(None, [override])
        return
    with pytest.raises(ConfigError) as err:
        RunConfig.load(None, [override])
    for text in named:
        assert text in str(err.value), (text, str(err.value))


def test_method_keys_are_refused_for_another_method():
    with pytest.raises(ConfigError, match=r"finetune.lora_r .*'adapter'"):
        RunConfig.load(None, ["finetune.method=adapter", "finetune.lora_r=4"])
    RunConfig.load(None, ["finetune.method=adapter", "finetune.adapter_dim=16"])


def test_site_codecs_resolve_per_site():
    cfg = RunConfig.load(None, ['compress.site_codecs="siteA=int4; siteB=fp16"'])
    assert str(cfg.compress.uplink_of("siteA")) == "int4:block=64"
    assert str(cfg.compress.uplink_of("siteB")) == "fp16"
    assert str(cfg.compress.uplink_of("siteC")) == "fp32"


def test_choice_lists_have_one_owner():
    """The lists config validates against are the ones the code dispatches on."""
    from fedprostate.eval import metrics
    from fedprostate.fl import strategies
    from fedprostate.models import backbones

    assert set(backbones.BACKBONES) == set(ARCHS)
    assert set(strategies._BASES) == set(STRATEGIES)
    assert metrics.THRESHOLD_RULES is THRESHOLD_RULES
    assert PARTITIONS == ("natural", "iid", "dirichlet", "loso")


def test_set_needs_key_value():
    with pytest.raises(ValueError, match="key=value"):
        RunConfig.load(None, ["fl.rounds"])


@pytest.mark.parametrize("command", ["federate", "centralize", "local"])
def test_a_typo_exits_2_with_one_line_before_any_data_is_read(tmp_path, command):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [command, "--set", f"data.cache={tmp_path / 'no-such-cache'}",
         "--set", "compress.uplink=int3", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "compress.uplink" in lines[0] and "int3" in lines[0]
    assert not out.exists()  # nothing written, no process started


ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_flower_app_has_a_default_for_every_config_key():
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    flwr_app = doc["tool"]["flwr"]["app"]
    assert flwr_app["publisher"] == "fedprostate"
    assert flwr_app["components"] == {
        "serverapp": "fedprostate.fl.server_app:app",
        "clientapp": "fedprostate.fl.client_app:app",
    }
    assert flatten(flwr_app["config"]) == RunConfig().to_flat()


def test_a_saved_run_config_with_leftover_method_keys_reads_back(tmp_path: Path):
    """A run folder records every key; an adapter run made from a LoRA base keeps lora_r."""
    cfg = RunConfig().replace(**{"finetune.lora_r": 2, "finetune.method": "adapter"})
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    assert RunConfig.load(path, saved=True) == cfg
    with pytest.raises(ConfigError, match="finetune.lora_r"):
        RunConfig.load(path)  # the same file given as a user's configuration is refused
    with pytest.raises(ConfigError, match="finetune.lora_r"):
        RunConfig.load(path, ["finetune.lora_r=4"], saved=True)  # an override is still checked


def test_local_work_is_steps_by_default_and_epochs_only_when_asked():
    assert (RunConfig().train.steps, RunConfig().train.epochs) == (20, 0)
    assert RunConfig.load(None, ["train.epochs=2"]).train.epochs == 2
    with pytest.raises(ConfigError, match="train.epochs and train.steps"):
        RunConfig.load(None, ["train.epochs=2", "train.steps=5"])
    with pytest.raises(ConfigError, match="train.schedule"):
        RunConfig.load(None, ["train.schedule=linear"])
    with pytest.raises(ConfigError, match="train.sampled_weight"):
        RunConfig.load(None, ["train.sampled_weight=2"])
