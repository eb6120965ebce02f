"""The study configuration (``configs/study-*.toml``), read once into a frozen dataclass.

Everything that decides a verdict is fixed here *before* anything runs: the significance level,
the non-inferiority margin, the smallest gain of interest for superiority claims, the minimum
test size (patients and positives) below which no verdict is given, the multiplicity correction
(Holm, always), the training seeds, the stopping rule (``fl.patience`` rounds without a better
validation AUROC, within the ``fl.rounds`` cap) and the tuning budget (the same learning rates
for every arm). ``fedprostate study`` writes these into the study folder and refuses to resume a
folder whose pre-registered values differ.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedprostate.config import (
    ALPHA,
    NONINFERIORITY_MARGIN,
    SUPERIORITY_MARGIN,
    RunConfig,
    flatten,
)

DEFAULT_SPLIT = (0.6, 0.2, 0.2)  # train, val, test: `data prepare`'s default
SECTIONS = (
    "backbone",
    "method",
    "compression",
    "input",
    "aggregator",
    "pretraining",
    "distillation",
    "baselines",
    "loso",
)


@dataclass(frozen=True)
class Preregistration:
    alpha: float = ALPHA
    margin_noninferiority: float = (
        NONINFERIORITY_MARGIN  # AUROC loss a non-inferiority claim allows
    )
    margin_superiority: float = SUPERIORITY_MARGIN  # smallest AUROC gain a superiority claim needs
    params_reduction: float = 0.99  # claim 2b: "~99 % fewer trainable parameters"
    n_boot: int = 1000
    # No verdict on fewer test patients or positives (findings at lesion level, patients at
    # patient level) than this, whatever the CI says.
    min_test_patients: int = 100
    min_test_positives: int = 30

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"study.alpha must be in (0, 1), got {self.alpha}")
        if self.margin_noninferiority < 0 or self.margin_superiority < 0:
            raise ValueError("study margins must be >= 0 (AUROC differences)")
        if self.n_boot < 100:
            raise ValueError(f"study.n_boot must be >= 100, got {self.n_boot}")
        if self.min_test_patients < 1 or self.min_test_positives < 1:
            raise ValueError("study.min_test_patients and min_test_positives must be >= 1")


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
    # train / validation / test fractions of the patients (per site and label); () = the crop
    # cache's own split (0.6 / 0.2 / 0.2 when the study prepares it). Set, it is pre-registered.
    split: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        split = tuple(float(x) for x in self.split)
        object.__setattr__(self, "split", split)
        if split and (len(split) != 3 or min(split) <= 0 or abs(sum(split) - 1) > 1e-6):
            raise ValueError(
                f"data.split must be three positive fractions (train, val, test) summing to 1, "
                f"got {list(split)}"
            )

    def fractions(self) -> tuple[float, float, float]:
        """The split the study prepares its crop caches with."""
        return self.split or DEFAULT_SPLIT  # type: ignore[return-value]


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
    seeds: tuple[int, ...]  # training seeds of every arm (the first one also tunes the LR)
    reference: dict[str, Any]  # dotted RunConfig keys of the shared reference arm
    backbones: dict[str, str]  # role (swin, resnet, vit) -> arch name in BACKBONES
    methods: tuple[str, ...]
    codecs: tuple[str, ...]
    mixed_codecs: tuple[str, ...]  # cycled over the sites (sorted) for the "mixed" arm
    aggregators: tuple[str, ...]
    prox_mu: float
    loso_holdouts: int  # how many sites (first by name) get a leave-one-site-out arm
    student: str = "student_test"  # distillation: the compact student's arch (full fine-tuning)
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
        seeds = tuple(int(x) for x in tuning.get("seeds", [reference.get("seed", 0)]))
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"{source}: tuning.seeds must be distinct, at least one: {seeds}")
        return cls(
            name=name,
            sections=sections,
            prereg=prereg,
            data=DataPlan(**raw.get("data", {})),
            pretrain=PretrainPlan(**raw.get("pretrain", {})),
            learning_rates=lrs,
            seeds=seeds,
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
            student=str(arms.get("student", "student_test")),
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
            "min_test_patients": p.min_test_patients,
            "min_test_positives": p.min_test_positives,
            "multiplicity": "holm (primary family; secondary family apart)",
            "seeds": list(self.seeds),
            "stopping": self.stopping_rule(),
        } | ({"split": list(self.data.split)} if self.data.split else {})

    def stopping_rule(self) -> dict:
        """Every arm: stop after ``patience`` scored rounds without a better validation AUROC,
        at most ``rounds`` rounds; the validation-best round is the arm's model."""
        run = RunConfig.from_flat(self.reference)
        return {"rounds": run.fl.rounds, "patience": run.fl.patience, "on": "validation AUROC"}
