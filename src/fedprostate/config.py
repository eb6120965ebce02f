"""Typed run configuration: one frozen dataclass per group, TOML files and dotted overrides.

A run is described by a TOML file with tables ``[data]``, ``[model]``, ``[finetune]``,
``[train]``, ``[fl]``, ``[compress]``, ``[eval]``, ``[distill]``, ``[track]``, ``[privacy]`` and
``[pretrain]`` (federated pre-training). Every key can be overridden
on the command line as ``--set group.key=value`` and travels through Flower's run config as the
same dotted key (``fl.rounds``), so the configuration is parsed once, in one place, into
:class:`RunConfig`.

This module is the one owner of every choice list (architectures, fine-tuning methods,
partitions, strategies, threshold rules) and parses every codec string (uplink, downlink,
per-site codecs) when a configuration loads. Every value is checked then: an unknown key, a
choice outside its list, a value out of range or a meaningless combination raises
:class:`ConfigError` naming the key, the bad value and what is allowed, before any data is read
or any process starts.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedprostate.compress.spec import CodecSpec

# ---- choice lists (their one owner) ----------------------------------------------------------
ARCHS = (
    "swin_tiny", "resnet50", "vit_small", "vit_base", "swin_test", "vit_test", "resnet_test",
    "resnet18", "mobilenetv3_small_100", "mobilenetv3_large_100", "efficientnet_b0", "swin_mini",
    "student_test", "vit_base_clip", "vit_clip_test",
)  # fmt: skip
METHODS = ("full", "linear", "adapter", "lora", "ffa-lora")
PARTITIONS = ("natural", "iid", "dirichlet", "loso")
STRATEGIES = (
    "fedavg", "fedadam", "fedyogi", "fedadagrad", "fedprox",
    "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan",
)  # fmt: skip
# Robust aggregators that assume up to ``fl.num_malicious`` Byzantine sites.
BYZANTINE_STRATEGIES = ("krum", "multikrum", "bulyan")
THRESHOLD_RULES = ("youden", "sens90")
SSL_METHODS = ("simmim", "simclr", "dino")  # self-supervised pre-training (models/ssl.py)
SCHEDULES = ("constant", "cosine")
# Arithmetic of training and scoring: "auto" = bf16 autocast on a CUDA device, fp32 elsewhere
# (CPU results stay bit-reproducible unless bf16 is asked for; docs/readme/speed.md measures it).
PRECISIONS = ("auto", "fp32", "bf16")
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps")
# Where a finding comes from (data/study.py explains each). Headline metrics count what a reader
# marked or the label-free rule proposed (organ slices in organ mode); "sampled" normal tissue is
# an optional extra training negative, reported apart and never selected on.
FINDING_SOURCES = ("reader", "proposal", "sampled", "organ")
HEADLINE_SOURCES = ("reader", "proposal")
APART_SOURCES = ("sampled",)
# Pre-registered defaults of every verdict (study, distillation, benchmarks): significance level,
# the AUROC loss a non-inferiority claim tolerates, the smallest gain a superiority claim needs.
ALPHA = 0.05
NONINFERIORITY_MARGIN = 0.02
SUPERIORITY_MARGIN = 0.0
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_mlp", "lora_attn", "lora_stages")
# Differential privacy (docs/readme/privacy.md). Client level: Flower's DP strategy wrappers
# (server-side or client-side clipping, fixed or adaptive) or Flower's LocalDpMod at the sites.
CLIENT_DP = (
    "off", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive", "local",
)  # fmt: skip
ACCOUNTANTS = ("rdp", "prv")  # Opacus' accountants
# Strategies whose aggregate is the (equally weighted) mean that Flower's DP wrappers noise and
# that SecAgg+ computes; an adaptive server step (FedAdam) or a robust rule after the sum is not.
DP_STRATEGIES = ("fedavg", "fedprox")
SECAGG_STRATEGIES = ("fedavg", "fedprox")
# Timm Swin partitions windows before attention: attn.qkv/attn.proj see B x windows rows, so
# Opacus' per-sample gradients of LoRA there are per window, not per sample (docs).
WINDOWED_ARCHS = tuple(a for a in ARCHS if a.startswith("swin"))
ADAPTER_KEYS = ("adapter_dim", "adapter_blocks")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key, the value and what is allowed."""


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r} is not allowed; choose one of {', '.join(allowed)}")


def _check(key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is out of range; allowed: {allowed}")


def parse_codec(key: str, text: str) -> CodecSpec:
    try:
        return CodecSpec.parse(text)
    except ValueError as exc:
        reason = str(exc).removeprefix(f"codec {text!r}: ")
        raise ConfigError(f"{key} = {text!r} is not a codec: {reason}") from None


def parse_site_codecs(text: str) -> dict[str, CodecSpec]:
    """``"siteA=int4;siteB=fp32"`` → {site: codec}; every item checked."""
    out: dict[str, CodecSpec] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        site, sep, codec = item.partition("=")
        if not sep or not site.strip():
            raise ConfigError(
                f"compress.site_codecs item {item!r} is not SITE=CODEC "
                '(write e.g. "siteA=int4;siteB=fp32")'
            )
        if site.strip() in out:
            raise ConfigError(f"compress.site_codecs names site {site.strip()!r} twice")
        out[site.strip()] = parse_codec(f"compress.site_codecs[{site.strip()}]", codec.strip())
    return out


@dataclass(frozen=True)
class DataConfig:
    cache: str = ""  # crop cache folder written by `data prepare` (absolute path in runs)
    partition: str = "natural"  # natural | iid | dirichlet | loso
    num_partitions: int = 0  # 0 = one per site (natural) or number of sites
    dirichlet_alpha: float = 0.5
    holdout_site: str = ""  # leave-one-site-out: the site that never trains
    max_train_per_client: int = 0  # 0 = all; a cap keeps CPU runs short (documented reduction)

    def __post_init__(self) -> None:
        _choice("data.partition", self.partition, PARTITIONS)
        if self.partition == "loso" and not self.holdout_site:
            raise ConfigError("data.partition = 'loso' needs data.holdout_site (the held-out site)")
        _check("data.num_partitions", self.num_partitions, self.num_partitions >= 0, ">= 0")
        _check("data.dirichlet_alpha", self.dirichlet_alpha, self.dirichlet_alpha > 0, "> 0")
        _check(
            "data.max_train_per_client",
            self.max_train_per_client,
            self.max_train_per_client >= 0,
            ">= 0 (0 = all)",
        )


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "swin_tiny"
    crop: int = 64
    foundation: str = ""  # path to a foundation checkpoint (.safetensors); "" = random init
    foundation_sha256: str = ""  # expected hash of the foundation backbone ("" = not checked)
    in_chans: int = 0  # input channels; 0 = from the crop cache's meta.json (3 per slice)

    def __post_init__(self) -> None:
        _choice("model.arch", self.arch, ARCHS)
        _check("model.in_chans", self.in_chans, self.in_chans >= 0, ">= 0 (0 = from the cache)")
        _check("model.crop", self.crop, self.crop >= 32 and self.crop % 32 == 0, "a multiple of 32")


@dataclass(frozen=True)
class FinetuneConfig:
    """How the backbone is fine-tuned and which tensors travel (see models/finetune.py).

    method: full | linear | adapter | lora | ffa-lora.
    lora_r / lora_alpha / lora_dropout: LoRA rank, scaling numerator (scale = alpha / r), dropout.
    lora_mlp: also put LoRA on the transformer MLPs (fc1, fc2); ignored for ResNet.
    lora_attn: LoRA on the attention projections (qkv, proj); false with lora_mlp = true puts
    LoRA on the MLPs only (what DP-SGD on a Swin needs); ignored for ResNet.
    lora_stages: LoRA only in the last N of the backbone's 4 stages (0 = every stage). Nothing
    before the first adapted stage trains, so the backward pass stops there (cheaper steps).
    adapter_dim: adapter bottleneck width. adapter_blocks: how many final-stage blocks get one.
    local_norms: FedBN-style: normalisation layers train but stay on the client.
    """

    method: str = "lora"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_mlp: bool = False
    lora_attn: bool = True
    lora_stages: int = 0
    adapter_dim: int = 64
    adapter_blocks: int = 2
    local_norms: bool = False

    def __post_init__(self) -> None:
        _choice("finetune.method", self.method, METHODS)
        _check("finetune.lora_r", self.lora_r, self.lora_r >= 1, ">= 1")
        _check("finetune.lora_alpha", self.lora_alpha, self.lora_alpha > 0, "> 0")
        _check("finetune.lora_dropout", self.lora_dropout, 0 <= self.lora_dropout < 1, "[0, 1)")
        _check("finetune.lora_stages", self.lora_stages, 0 <= self.lora_stages <= 4, "0 (all) to 4")
        _check("finetune.adapter_dim", self.adapter_dim, self.adapter_dim >= 1, ">= 1")
        _check("finetune.adapter_blocks", self.adapter_blocks, self.adapter_blocks >= 1, ">= 1")
        if not (self.lora_attn or self.lora_mlp):
            raise ConfigError(
                "finetune.lora_attn = false and finetune.lora_mlp = false leave LoRA no target; "
                "set one of them to true"
            )


@dataclass(frozen=True)
class TrainConfig:
    # Local work per round: `steps` (the default unit: a site's cost does not grow with its
    # size), or `epochs` over the site's data when > 0 (then `steps` is not used).
    epochs: int = 0
    steps: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    augment: bool = True
    class_weighting: bool = True
    prox_mu: float = 0.0  # FedProx proximal term (0 = off)
    threads: int = 0  # torch threads per training process (0 = leave torch's default)
    device: str = "cpu"
    # Sampled normal tissue (source "sampled") as extra training negatives: loss weight of each
    # such crop relative to a finding (0 = not trained on; never in any metric either way).
    sampled_weight: float = 1.0
    schedule: str = "constant"  # learning rate over rounds: constant | cosine (after warm-up)
    warmup_rounds: int = 0  # linear warm-up of the learning rate over the first rounds
    grad_clip: float = 1.0  # clip the gradient's global norm to this (0 = off)
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; see PRECISIONS)

    def __post_init__(self) -> None:
        _check("train.lr", self.lr, self.lr > 0, "> 0")
        _check("train.sampled_weight", self.sampled_weight, 0 <= self.sampled_weight <= 1, "[0, 1]")
        _choice("train.schedule", self.schedule, SCHEDULES)
        _check("train.warmup_rounds", self.warmup_rounds, self.warmup_rounds >= 0, ">= 0")
        _check("train.grad_clip", self.grad_clip, self.grad_clip >= 0, ">= 0 (0 = off)")
        _choice("train.precision", self.precision, PRECISIONS)
        _check("train.batch_size", self.batch_size, self.batch_size >= 1, ">= 1")
        _check("train.epochs", self.epochs, self.epochs >= 0, ">= 0")
        _check("train.steps", self.steps, self.steps >= 0, ">= 0")
        if self.epochs < 1 and self.steps < 1:
            raise ConfigError("train.epochs or train.steps must be >= 1")
        _check("train.weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        _check("train.prox_mu", self.prox_mu, self.prox_mu >= 0, ">= 0")
        _check("train.threads", self.threads, self.threads >= 0, ">= 0 (0 = torch's default)")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(
                f"train.device = {self.device!r} is not allowed; use cpu, cuda, cuda:N or mps"
            )


@dataclass(frozen=True)
class FLConfig:
    """Federation settings.

    strategy: a Flower strategy (``STRATEGIES``); fedmedian, fedtrimmedavg, krum, multikrum and
    bulyan are Flower's robust aggregators. clip_norm > 0 clips every site's update (reply minus
    the broadcast model) to that L2 norm before any strategy aggregates it. trim_beta: fraction
    cut at each end by fedtrimmedavg. num_malicious: sites Krum/Multi-Krum/Bulyan assume may be
    Byzantine (Bulyan needs at least 4 * num_malicious + 3 replies). krum_select: updates
    Multi-Krum averages (0 = replies - num_malicious). min_available_nodes: connected nodes a
    round needs (waited for at most round_timeout, then the round is skipped), never forced to
    the number of sites. sites: the coordinator's site registry (node id -> site and registered
    split sizes, written at registration), "" in simulation. min_sites: no round aggregates
    (training or evaluation) from fewer replies, so no aggregate is one site's update; a run
    whose federation has fewer sites does not start. secure_aggregation: Flower's SecAgg+ (the
    server only ever holds the sum of the sites' updates); secagg_threshold: fraction of the
    key shares needed to remove a dropped site's masks (lower survives more drop-outs).
    """

    strategy: str = "fedadam"
    rounds: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0  # federated evaluation on each site's val split
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    clip_norm: float = 0.0  # L2 norm bound of each site's update (0 = off)
    trim_beta: float = 0.2
    num_malicious: int = 0
    krum_select: int = 0
    sites: str = ""
    server_lr: float = 1e-2  # eta of FedAdam/FedYogi/FedAdagrad
    tau: float = 1e-3  # adaptivity of FedOpt (explicit, see Reddi et al. 2020)
    beta_1: float = 0.9
    beta_2: float = 0.99
    round_timeout: float = 3600.0
    eval_every: int = 1  # server-side benchmark test each k rounds (simulation only)
    # Each site scores its own validation split inside a training round (its reply's val-auroc)
    # every k rounds and in the last one; 0 = never (val-auroc NaN, val-n 0, as under DP).
    site_val_every: int = 1
    client_cpus: float = 1.0  # Ray resources per simulated client: CPUs ...
    client_gpus: float = 0.0  # ... and GPUs (a fraction shares one GPU between clients)
    # Ray cluster of the simulation: "" = start a private one on this machine; "auto" or
    # "host:port" = join a running cluster (`ray start --head` there, `ray start --address` on
    # each further machine), whose CPUs/GPUs the clients are then spread over.
    ray_address: str = ""
    # Early stopping on validation: stop after this many scored rounds without a better
    # validation AUROC (0 = run every round). Test data never enters the decision.
    patience: int = 0
    min_sites: int = 3
    secure_aggregation: bool = False
    secagg_threshold: float = 0.6

    def __post_init__(self) -> None:
        _choice("fl.strategy", self.strategy, STRATEGIES)
        _check("fl.min_sites", self.min_sites, self.min_sites >= 1, ">= 1")
        _check("fl.site_val_every", self.site_val_every, self.site_val_every >= 0, ">= 0")
        _check(
            "fl.secagg_threshold", self.secagg_threshold, 0 < self.secagg_threshold <= 1, "(0, 1]"
        )
        if self.secure_aggregation and self.strategy not in SECAGG_STRATEGIES:
            raise ConfigError(
                f"fl.secure_aggregation = true does not support fl.strategy = "
                f"{self.strategy!r}: SecAgg+ hands the server only the weighted mean, which "
                f"{', '.join(SECAGG_STRATEGIES)} use as it is; choose one of them"
            )
        if self.secure_aggregation and self.clip_norm > 0:
            raise ConfigError(
                "fl.clip_norm needs each site's update at the server, which "
                "fl.secure_aggregation = true hides; clip at the sites with "
                'privacy.client = "client-fixed" instead'
            )
        _check("fl.rounds", self.rounds, self.rounds >= 1, ">= 1")
        _check("fl.fraction_train", self.fraction_train, 0 < self.fraction_train <= 1, "(0, 1]")
        _check(
            "fl.fraction_evaluate",
            self.fraction_evaluate,
            0 <= self.fraction_evaluate <= 1,
            "[0, 1]",
        )
        _check("fl.min_train_nodes", self.min_train_nodes, self.min_train_nodes >= 1, ">= 1")
        _check(
            "fl.min_available_nodes",
            self.min_available_nodes,
            self.min_available_nodes >= 1,
            ">= 1",
        )
        _check("fl.server_lr", self.server_lr, self.server_lr > 0, "> 0")
        _check("fl.tau", self.tau, self.tau > 0, "> 0")
        _check("fl.beta_1", self.beta_1, 0 <= self.beta_1 < 1, "[0, 1)")
        _check("fl.beta_2", self.beta_2, 0 <= self.beta_2 < 1, "[0, 1)")
        _check("fl.round_timeout", self.round_timeout, self.round_timeout > 0, "> 0 seconds")
        _check("fl.eval_every", self.eval_every, self.eval_every >= 1, ">= 1")
        _check("fl.client_cpus", self.client_cpus, self.client_cpus > 0, "> 0")
        _check("fl.client_gpus", self.client_gpus, self.client_gpus >= 0, ">= 0 (0 = no GPU)")
        _check(
            "fl.ray_address",
            self.ray_address,
            self.ray_address == self.ray_address.strip() and " " not in self.ray_address,
            '"" (private cluster), "auto" or host:port',
        )
        _check("fl.patience", self.patience, self.patience >= 0, ">= 0 (0 = off)")
        _check("fl.clip_norm", self.clip_norm, self.clip_norm >= 0, ">= 0 (0 = off)")
        _check("fl.trim_beta", self.trim_beta, 0 < self.trim_beta < 0.5, "(0, 0.5)")
        _check("fl.num_malicious", self.num_malicious, self.num_malicious >= 0, ">= 0")
        _check("fl.krum_select", self.krum_select, self.krum_select >= 0, ">= 0 (0 = n - f)")
        if self.num_malicious and self.strategy not in BYZANTINE_STRATEGIES:
            raise ConfigError(
                f"fl.num_malicious = {self.num_malicious} set but fl.strategy = "
                f"{self.strategy!r} does not use it; it belongs to "
                f"{', '.join(BYZANTINE_STRATEGIES)}"
            )
        if self.krum_select and self.strategy != "multikrum":
            raise ConfigError(
                f"fl.krum_select = {self.krum_select} set but fl.strategy = "
                f"{self.strategy!r}; it belongs to multikrum"
            )

    def min_replies(self) -> int:
        """Fewest usable replies the strategy can aggregate (Krum: 2f + 3, Bulyan: 4f + 3)."""
        f = self.num_malicious
        return {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(
            self.strategy, 1
        )


@dataclass(frozen=True)
class CompressConfig:
    uplink: str = "fp32"  # codec of what clients send (see fedprostate.compress)
    downlink: str = "fp32"  # codec of what the server broadcasts
    error_feedback: bool = False
    # per-site override, "siteA=int4;siteB=fp32" (simulation stand-in for node config)
    site_codecs: str = ""

    def __post_init__(self) -> None:
        parse_codec("compress.uplink", self.uplink)
        parse_codec("compress.downlink", self.downlink)
        parse_site_codecs(self.site_codecs)

    def uplink_of(self, site: str) -> CodecSpec:
        """The codec ``site`` sends with: its ``site_codecs`` entry, else ``uplink``."""
        return parse_site_codecs(self.site_codecs).get(site) or parse_codec(
            "compress.uplink", self.uplink
        )


@dataclass(frozen=True)
class DistillConfig:
    teacher: str = ""  # exported teacher bundle folder; "" = no distillation
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the distillation term (1 - alpha on the hard labels)

    def __post_init__(self) -> None:
        _check("distill.temperature", self.temperature, self.temperature > 0, "> 0")
        _check("distill.alpha", self.alpha, 0 <= self.alpha <= 1, "[0, 1]")


@dataclass(frozen=True)
class EvalConfig:
    n_boot: int = 1000
    threshold_rule: str = "youden"  # youden | sens90

    def __post_init__(self) -> None:
        _check("eval.n_boot", self.n_boot, self.n_boot >= 10, ">= 10")
        _choice("eval.threshold_rule", self.threshold_rule, THRESHOLD_RULES)


@dataclass(frozen=True)
class TrackConfig:
    """Optional experiment tracking by the server (``records/tracking.py``; extra ``[tracking]``).

    tensorboard: event files in RUN/tensorboard. mlflow: an MLflow run per training run, in
    ``mlflow_uri`` (a server, ``sqlite:///...``, ``file:...``) or, when empty,
    $MLFLOW_TRACKING_URI or a local store beside the run folder. A URI alone turns MLflow on.
    experiment: the MLflow experiment name.
    """

    tensorboard: bool = False
    mlflow: bool = False
    mlflow_uri: str = ""
    experiment: str = "fedprostate"

    def __post_init__(self) -> None:
        _check("track.experiment", self.experiment, bool(self.experiment.strip()), "a name")

    @property
    def use_mlflow(self) -> bool:
        return self.mlflow or bool(self.mlflow_uri)


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy at two levels, one accountant (docs/readme/privacy.md).

    client: client-level DP with Flower's strategy wrappers (``server-fixed``,
    ``server-adaptive``: the server clips each update; ``client-fixed``, ``client-adaptive``:
    the sites clip with Flower's mods, the server noises the sum) or Flower's ``LocalDpMod``
    (``local``: each site clips and noises its own update). noise_multiplier (z) and clip_norm
    (C, the initial norm when adaptive) belong to it; target_quantile, clip_lr and
    clipped_count_stddev (0 = Flower's default, sites / 20) to adaptive clipping.
    dp_sgd: DP-SGD inside each site's training with Opacus, one patient per privacy unit (all of
    a patient's crops are sampled together and their summed gradient is clipped to dp_sgd_clip);
    dp_sgd_noise is sigma. epsilon: the budget every enabled level must stay within (0 = only
    report epsilon); delta: 0 = 1 / (training patients in the federation). accountant: Opacus'
    RDP or PRV accountant.
    """

    client: str = "off"
    noise_multiplier: float = 0.0
    clip_norm: float = 1.0
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clipped_count_stddev: float = 0.0
    dp_sgd: bool = False
    dp_sgd_noise: float = 0.0
    dp_sgd_clip: float = 1.0
    epsilon: float = 0.0
    delta: float = 0.0
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        _choice("privacy.client", self.client, CLIENT_DP)
        _choice("privacy.accountant", self.accountant, ACCOUNTANTS)
        for key in ("noise_multiplier", "dp_sgd_noise", "epsilon", "clipped_count_stddev"):
            value = getattr(self, key)
            _check(f"privacy.{key}", value, value >= 0 and value != float("inf"), ">= 0, finite")
        _check("privacy.clip_norm", self.clip_norm, self.clip_norm > 0, "> 0")
        _check("privacy.dp_sgd_clip", self.dp_sgd_clip, self.dp_sgd_clip > 0, "> 0")
        _check("privacy.delta", self.delta, 0 <= self.delta < 1, "[0, 1) (0 = 1 / patients)")
        _check(
            "privacy.target_quantile",
            self.target_quantile,
            0 <= self.target_quantile <= 1,
            "[0, 1]",
        )
        _check("privacy.clip_lr", self.clip_lr, self.clip_lr > 0, "> 0")
        if self.epsilon > 0 and not self.enabled:
            raise ConfigError(
                f"privacy.epsilon = {self.epsilon} is a budget, but no DP mechanism is on "
                '(privacy.client = "off", privacy.dp_sgd = false): nothing would spend it'
            )
        for on, key in ((self.client_level, "noise_multiplier"), (self.dp_sgd, "dp_sgd_noise")):
            if on and getattr(self, key) == 0 and (self.epsilon > 0 or self.client == "local"):
                why = (
                    f"cannot give privacy.epsilon = {self.epsilon}"
                    if self.epsilon > 0
                    else 'is no local DP (privacy.client = "local" noises each update)'
                )
                raise ConfigError(
                    f"privacy.{key} = 0 {why}: without noise epsilon is infinite; set a noise "
                    "multiplier (`fedprostate federate` names the one the budget needs)"
                )

    @property
    def client_level(self) -> bool:
        return self.client != "off"

    @property
    def enabled(self) -> bool:
        return self.client_level or self.dp_sgd


@dataclass(frozen=True)
class PretrainConfig:
    """Federated self-supervised pre-training (``fedprostate pretrain --federated``).

    pool: the unlabeled pool (``.safetensors`` from ``fedprostate data pool``), split by study
    across ``sites`` sites (a hash of the study key and ``seed``: whole studies per site).
    method: simmim | simclr | dino. weight_decay: AdamW's, for the local SSL steps.
    Local work per round, learning rate, batch size and device are ``train.*``.
    """

    pool: str = ""
    method: str = "dino"
    sites: int = 4
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        _choice("pretrain.method", self.method, SSL_METHODS)
        _check("pretrain.sites", self.sites, self.sites >= 1, ">= 1")
        _check("pretrain.weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    out: str = ""  # run folder (absolute); set by the commands
    resume: bool = False
    keep_last: int = 0  # checkpoints kept: the newest N rounds + the best one (0 = every round)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self) -> None:
        _check("keep_last", self.keep_last, self.keep_last >= 0, ">= 0 (0 = keep every round)")
        _check_privacy(self)
        if self.fl.strategy == "fedprox" and self.train.prox_mu <= 0:
            raise ConfigError(
                "fl.strategy = 'fedprox' needs train.prox_mu > 0 (with 0 it is FedAvg)"
            )

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
                    raise ConfigError(f"unknown config key {key!r}")
                top[group] = _coerce(value, hints[group], key)
                continue
            if group not in hints or not dataclasses.is_dataclass(hints[group]):
                known = ", ".join(n for n, h in hints.items() if dataclasses.is_dataclass(h))
                raise ConfigError(
                    f"unknown config group {group!r} in key {key!r} (groups: {known})"
                )
            sub_hints = typing.get_type_hints(hints[group])
            if name not in sub_hints:
                raise ConfigError(
                    f"unknown config key {key!r} (known in [{group}]: "
                    f"{', '.join(sorted(sub_hints))})"
                )
            groups.setdefault(group, {})[name] = _coerce(value, sub_hints[name], key)
        built = {g: hints[g](**kw) for g, kw in groups.items()}
        return cls(**top, **built)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        overrides: list[str] | None = None,
        saved: bool = False,
    ) -> RunConfig:
        """A configuration file plus ``key=value`` overrides, every value checked.

        Keys a user sets to a non-default value that the chosen method ignores
        (``finetune.adapter_dim`` with LoRA, ``finetune.lora_r`` with an adapter or full
        fine-tuning) are refused: they would silently do nothing. ``saved=True`` reads a run
        folder's ``config.toml`` (a record of every key): then only the overrides are so checked.
        """
        flat: dict[str, Any] = {}
        given: set[str] = set()
        if path:
            try:
                flat = flatten(tomllib.loads(Path(path).read_text(encoding="utf-8")))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML ({exc})") from None
            given = set() if saved else set(flat)
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"--set expects key=value, got {item!r}")
            flat[key.strip()] = _parse_literal(raw.strip())
            given.add(key.strip())
        cfg = cls.from_flat(flat)
        _check_combinations(cfg, given)
        return cfg

    def to_flat(self) -> dict[str, Any]:
        return flatten(dataclasses.asdict(self))

    def replace(self, **dotted: Any) -> RunConfig:
        """A copy with dotted keys replaced: ``cfg.replace(**{"fl.rounds": 2})``."""
        flat = self.to_flat()
        flat.update(dotted)
        return RunConfig.from_flat(flat)

    def to_toml(self) -> str:
        lines = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not dataclasses.is_dataclass(value) and f.name not in ("out", "resume"):
                lines.append(f"{f.name} = {_toml_value(value)}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"\n[{f.name}]")
                for k, v in dataclasses.asdict(value).items():
                    lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"


def _check_privacy(cfg: RunConfig) -> None:
    """Combinations under which a DP guarantee or SecAgg+ would be false (docs/readme/privacy.md)."""
    p, fl = cfg.privacy, cfg.fl
    if p.client_level and fl.strategy not in DP_STRATEGIES:
        raise ConfigError(
            f"privacy.client = {p.client!r} needs fl.strategy in {', '.join(DP_STRATEGIES)} "
            f"(got {fl.strategy!r}): Flower's wrapper noises the strategy's output, which only "
            "for the plain mean bounds one site's influence by clip_norm / sites"
        )
    if p.client_level and fl.clip_norm > 0:
        raise ConfigError(
            "fl.clip_norm and privacy.client both clip updates; privacy.clip_norm is the "
            "bound the noise is calibrated to: set fl.clip_norm = 0"
        )
    if fl.secure_aggregation:
        if p.client in ("server-fixed", "server-adaptive", "client-adaptive"):
            raise ConfigError(
                f"privacy.client = {p.client!r} cannot run with fl.secure_aggregation = true: "
                "the server never sees one site's update (use client-fixed or local)"
            )
        codecs = {
            "compress.uplink": cfg.compress.uplink,
            "compress.downlink": cfg.compress.downlink,
        }
        for key, text in codecs.items():
            if text != "fp32":
                raise ConfigError(
                    f"{key} = {text!r} with fl.secure_aggregation = true: SecAgg+ quantizes "
                    "and masks dense fp32 tensors itself; set it to fp32"
                )
        if cfg.compress.error_feedback or cfg.compress.site_codecs:
            raise ConfigError(
                "compress.error_feedback / compress.site_codecs with fl.secure_aggregation = "
                "true: SecAgg+ sends dense tensors; turn them off"
            )
    if p.dp_sgd:
        if cfg.finetune.method == "full":
            raise ConfigError(
                "privacy.dp_sgd = true with finetune.method = 'full': per-sample gradients of "
                "every backbone tensor (Swin's relative position tables included) are not "
                "supported; use lora, ffa-lora, adapter or linear"
            )
        swin_lora = cfg.model.arch in WINDOWED_ARCHS and cfg.finetune.method in ("lora", "ffa-lora")
        if swin_lora and cfg.finetune.lora_attn:
            raise ConfigError(
                f"privacy.dp_sgd = true with model.arch = {cfg.model.arch!r} and "
                "finetune.lora_attn = true: Swin's window attention gives Opacus per-window, "
                "not per-sample gradients; set finetune.lora_attn = false and "
                "finetune.lora_mlp = true (LoRA on the MLPs + head)"
            )
        if cfg.train.prox_mu > 0 or cfg.distill.teacher:
            key = "train.prox_mu" if cfg.train.prox_mu > 0 else "distill.teacher"
            raise ConfigError(f"{key} is not supported with privacy.dp_sgd = true")


def _check_combinations(cfg: RunConfig, given: set[str]) -> None:
    """Keys set to a non-default value that the chosen method ignores are an error.

    (A saved ``config.toml`` lists every key with its default: those are fine.)
    """
    method, default = cfg.finetune.method, FinetuneConfig()

    def changed(keys: tuple[str, ...]) -> list[str]:
        return [
            f"finetune.{k}"
            for k in keys
            if f"finetune.{k}" in given and getattr(cfg.finetune, k) != getattr(default, k)
        ]

    if "train.epochs" in given and "train.steps" in given and cfg.train.epochs > 0:
        raise ConfigError(
            "train.epochs and train.steps both set: local work per round is one or the other "
            "(epochs > 0 wins); remove one"
        )
    ignored = []
    if method not in ("lora", "ffa-lora"):
        ignored += changed(LORA_KEYS)
    if method != "adapter":
        ignored += changed(ADAPTER_KEYS)
    if ignored:
        them = "it" if len(ignored) == 1 else "them"
        raise ConfigError(
            f"{', '.join(ignored)} set but finetune.method = {method!r} does not use {them}; "
            f"remove {them} or choose the method {them} belong(s) to"
        )


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
            if not isinstance(value, bool | int) or value not in (0, 1):
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key!r}: cannot read {value!r} as {hint.__name__}") from None
    return value


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
