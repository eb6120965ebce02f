"""Typed run configuration: one frozen dataclass per group, TOML files and dotted overrides.

A run is described by a TOML file with tables ``[data]``, ``[model]``, ``[finetune]``,
``[train]``, ``[fl]``, ``[compress]`` and ``[eval]``. Every key can be overridden on the command
line as ``--set group.key=value`` and travels through Flower's run config as the same dotted key
(``fl.rounds``), so the configuration is parsed once, in one place, into :class:`RunConfig`.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    cache: str = ""  # crop cache folder written by `data prepare` (absolute path in runs)
    partition: str = "natural"  # natural | iid | dirichlet | loso
    num_partitions: int = 0  # 0 = one per site (natural) or number of sites
    dirichlet_alpha: float = 0.5
    holdout_site: str = ""  # leave-one-site-out: the site that never trains
    max_train_per_client: int = 0  # 0 = all; a cap keeps CPU runs short (documented reduction)

    def __post_init__(self) -> None:
        if self.partition not in ("natural", "iid", "dirichlet", "loso"):
            raise ValueError(
                f"data.partition must be natural|iid|dirichlet|loso, not {self.partition!r}"
            )
        if self.partition == "loso" and not self.holdout_site:
            raise ValueError("data.partition = 'loso' needs data.holdout_site")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "swin_tiny"
    crop: int = 64
    foundation: str = ""  # path to a foundation checkpoint (.safetensors); "" = random init
    foundation_sha256: str = ""  # expected hash of the foundation backbone ("" = not checked)


@dataclass(frozen=True)
class FinetuneConfig:
    method: str = "lora"  # full | linear | adapter | lora | ffa-lora
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_mlp: bool = False
    adapter_dim: int = 64
    adapter_blocks: int = 2
    local_norms: bool = False


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1  # local epochs per round
    steps: int = 0  # > 0: this many local steps per round instead of epochs
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    augment: bool = True
    class_weighting: bool = True
    prox_mu: float = 0.0  # FedProx proximal term (0 = off)
    threads: int = 0  # torch threads per training process (0 = leave torch's default)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.epochs < 1 and self.steps < 1:
            raise ValueError("train.epochs or train.steps must be >= 1")


@dataclass(frozen=True)
class FLConfig:
    strategy: str = "fedadam"  # fedavg | fedadam | fedyogi | fedadagrad | fedprox
    rounds: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0  # federated evaluation on each site's val split
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    server_lr: float = 1e-2  # eta of FedAdam/FedYogi/FedAdagrad
    tau: float = 1e-3  # adaptivity of FedOpt (explicit, see Reddi et al. 2020)
    beta_1: float = 0.9
    beta_2: float = 0.99
    round_timeout: float = 3600.0
    eval_every: int = 1  # server-side benchmark test each k rounds (simulation only)
    client_cpus: float = 1.0  # Ray resources per simulated client

    def __post_init__(self) -> None:
        if self.strategy not in ("fedavg", "fedadam", "fedyogi", "fedadagrad", "fedprox"):
            raise ValueError(
                f"fl.strategy {self.strategy!r} is not one of "
                "fedavg|fedadam|fedyogi|fedadagrad|fedprox"
            )
        if self.rounds < 1:
            raise ValueError("fl.rounds must be >= 1")


@dataclass(frozen=True)
class CompressConfig:
    uplink: str = "fp32"  # codec of what clients send (see fedprostate.compress)
    downlink: str = "fp32"  # codec of what the server broadcasts
    error_feedback: bool = False
    site_codecs: str = (
        ""  # per-site override, "siteA=int4;siteB=fp32" (simulation stand-in for node config)
    )


@dataclass(frozen=True)
class DistillConfig:
    teacher: str = ""  # exported teacher bundle folder; "" = no distillation
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the distillation term (1 - alpha on the hard labels)

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise ValueError("distill.temperature must be > 0 and distill.alpha in [0, 1]")


@dataclass(frozen=True)
class EvalConfig:
    n_boot: int = 1000
    threshold_rule: str = "youden"  # youden | sens90


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    out: str = ""  # run folder (absolute); set by the commands
    resume: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> RunConfig:
        """Build from dotted keys (``{"fl.rounds": 3}``); unknown keys are an error."""
        groups: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for key, value in flat.items():
            group, _, name = key.partition(".")
            if not name:
                if group not in hints or dataclasses.is_dataclass(hints[group]):
                    raise ValueError(f"unknown config key {key!r}")
                top[group] = _coerce(value, hints[group], key)
                continue
            if group not in hints or not dataclasses.is_dataclass(hints[group]):
                raise ValueError(f"unknown config group {group!r} in key {key!r}")
            sub_hints = typing.get_type_hints(hints[group])
            if name not in sub_hints:
                raise ValueError(
                    f"unknown config key {key!r} (known in [{group}]: "
                    f"{', '.join(sorted(sub_hints))})"
                )
            groups.setdefault(group, {})[name] = _coerce(value, sub_hints[name], key)
        built = {g: hints[g](**kw) for g, kw in groups.items()}
        return cls(**top, **built)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
        flat = flatten(tomllib.loads(Path(path).read_text(encoding="utf-8"))) if path else {}
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects key=value, got {item!r}")
            flat[key.strip()] = _parse_literal(raw.strip())
        return cls.from_flat(flat)

    def to_flat(self) -> dict[str, Any]:
        return flatten(dataclasses.asdict(self))

    def replace(self, **dotted: Any) -> RunConfig:
        """A copy with dotted keys replaced: ``cfg.replace(**{"fl.rounds": 2})``."""
        flat = self.to_flat()
        flat.update(dotted)
        return RunConfig.from_flat(flat)

    def to_toml(self) -> str:
        lines = [f"seed = {_toml_value(self.seed)}"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"\n[{f.name}]")
                for k, v in dataclasses.asdict(value).items():
                    lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _parse_literal(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare string such as fedadam


def _coerce(value: Any, hint: Any, key: str) -> Any:
    if isinstance(hint, types.UnionType):
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config key {key!r}: cannot read {value!r} as {hint.__name__}") from exc
    return value


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
