"""The study configuration (``configs/study-*.toml``), read once into a frozen dataclass.

Everything that decides a verdict is fixed here *before* anything runs: the significance level,
the non-inferiority margin, the smallest gain of interest for superiority claims and the tuning
budget (the same learning rates for every arm). ``fedprostate study`` copies the file into the
study folder, and refuses to resume a folder whose pre-registered values differ.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedprostate.config import RunConfig, flatten

SECTIONS = (
    "backbone",
    "method",
    "compression",
    "input",
    "aggregator",
    "pretraining",
    "baselines",
    "loso",
)


@dataclass(frozen=True)
class Preregistration:
    alpha: float = 0.05
    margin_noninferiority: float = 0.02  # AUROC loss tolerated by claim 3 (int8 vs fp32)
    margin_superiority: float = 0.0  # smallest AUROC gain of interest for superiority claims
    params_reduction: float = 0.99  # claim 2b: "~99 % fewer trainable parameters"
    n_boot: int = 1000

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"study.alpha must be in (0, 1), got {self.alpha}")
        if self.margin_noninferiority < 0 or self.margin_superiority < 0:
            raise ValueError("study margins must be >= 0 (AUROC differences)")


@dataclass(frozen=True)
class DataPlan:
    cache: str = ""  # existing lesion crop cache ("" = synthesize and prepare)
    organ_cache: str = ""  # existing organ crop cache (section "input")
    unlabeled: str = ""  # folder with unlabeled/ studies for pre-training ("" = the synth output)
    preset: str = "small"
    sites: int = 4
    patients: int = 96
    unlabeled_studies: int = 40
    seed: int = 0
    crop: int = 32
    spacing: float = 0.5


@dataclass(frozen=True)
class PretrainPlan:
    enabled: bool = True  # the reference arm starts from a self-supervised foundation
    method: str = "simmim"  # ResNets always use simclr (SimMIM needs tokens)
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    per_study: int = 8


@dataclass(frozen=True)
class StudyConfig:
    name: str
    sections: tuple[str, ...]
    prereg: Preregistration
    data: DataPlan
    pretrain: PretrainPlan
    learning_rates: tuple[float, ...]
    reference: dict[str, Any]  # dotted RunConfig keys of the shared reference arm
    backbones: dict[str, str]  # role (swin, resnet, vit) -> arch name in BACKBONES
    methods: tuple[str, ...]
    codecs: tuple[str, ...]
    mixed_codecs: tuple[str, ...]  # cycled over the sites (sorted) for the "mixed" arm
    aggregators: tuple[str, ...]
    prox_mu: float
    loso_holdouts: int  # how many sites (first by name) get a leave-one-site-out arm
    seconds_per_round: dict[str, float] = field(default_factory=dict)  # estimate overrides
    notes: tuple[str, ...] = ()  # documented reductions, printed in the report
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> StudyConfig:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: cannot read study config ({exc})") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "") -> StudyConfig:
        study = dict(raw.get("study", {}))
        sections = tuple(study.pop("sections", SECTIONS))
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"{source}: unknown study sections {unknown}; known: {SECTIONS}")
        name = str(study.pop("name", Path(source).stem or "study"))
        notes = tuple(study.pop("notes", ()))
        prereg = Preregistration(**study)
        reference = flatten(raw.get("reference", {}))
        if "model.foundation" in reference or "data.cache" in reference:
            raise ValueError(
                f"{source}: [reference] must not set model.foundation or data.cache; "
                "the study writes them ([pretrain] enabled, [data] cache)"
            )
        RunConfig.from_flat(reference)  # fail now on a bad key, not after an hour of training
        arms = raw.get("arms", {})
        tuning = raw.get("tuning", {})
        lrs = tuple(
            float(x) for x in tuning.get("learning_rates", [reference.get("train.lr", 1e-3)])
        )
        if not lrs:
            raise ValueError(f"{source}: tuning.learning_rates is empty")
        return cls(
            name=name,
            sections=sections,
            prereg=prereg,
            data=DataPlan(**raw.get("data", {})),
            pretrain=PretrainPlan(**raw.get("pretrain", {})),
            learning_rates=lrs,
            reference=reference,
            backbones=dict(
                arms.get(
                    "backbones", {"swin": "swin_tiny", "resnet": "resnet50", "vit": "vit_small"}
                )
            ),
            methods=tuple(arms.get("methods", ("full", "adapter", "lora", "ffa-lora"))),
            codecs=tuple(arms.get("codecs", ("fp32", "fp16", "int8", "int4", "mixed"))),
            mixed_codecs=tuple(arms.get("mixed_codecs", ("fp32", "int8", "int4"))),
            aggregators=tuple(arms.get("aggregators", ("fedavg", "fedadam", "fedyogi", "fedprox"))),
            prox_mu=float(arms.get("prox_mu", 0.01)),
            loso_holdouts=int(arms.get("loso_holdouts", 1)),
            seconds_per_round=dict(raw.get("estimate", {})),
            notes=notes,
            source=source,
        )

    def preregistered(self) -> dict:
        """The values a resumed study must not change."""
        p = self.prereg
        return {
            "alpha": p.alpha,
            "margin_noninferiority": p.margin_noninferiority,
            "margin_superiority": p.margin_superiority,
            "params_reduction": p.params_reduction,
            "learning_rates": list(self.learning_rates),
            "n_boot": p.n_boot,
        }
