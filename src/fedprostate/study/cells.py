"""The study's arms and cells.

An *arm* is one setting under test (``method-full``: the reference arm with full fine-tuning);
a *cell* is one run of an arm at one learning rate of the tuning budget, in its own folder
``DIR/cells/<cell-id>/``. Arms are named by what they change relative to the shared reference
arm, and the reference arm has one id (``reference``) reused by every section that contains it:
Swin in the backbone section, LoRA in the method section, fp32 in the compression section,
lesion crops in the input section, FedAdam in the aggregator section, pre-trained init.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedprostate.config import RunConfig
from fedprostate.study.config import StudyConfig

REFERENCE = "reference"
KINDS = ("federate", "centralize", "local")


@dataclass(frozen=True)
class StudyPaths:
    """Where the study's inputs live (existing, or to be written by the runner)."""

    lesion_cache: str
    organ_cache: str
    foundations: dict[str, str]  # arch -> foundation checkpoint (.safetensors)
    sites: tuple[str, ...]


@dataclass(frozen=True)
class Arm:
    id: str
    kind: str  # federate | centralize | local
    overrides: dict[str, Any]  # dotted RunConfig keys on top of the reference arm
    sections: tuple[str, ...] = ()
    label: str = ""


@dataclass(frozen=True)
class Cell:
    id: str
    arm: str
    kind: str
    lr: float
    config: RunConfig = field(compare=False)

    def folder(self, study_dir: str | Path) -> Path:
        return Path(study_dir) / "cells" / self.id


def _arm_specs(cfg: StudyConfig, paths: StudyPaths) -> list[Arm]:
    ref_arch = str(cfg.reference.get("model.arch", "swin_tiny"))
    pretrained = cfg.pretrain.enabled

    def init(arch: str) -> dict:
        return {"model.foundation": paths.foundations.get(arch, "") if pretrained else ""}

    arms: list[Arm] = []
    add = arms.append
    if "backbone" in cfg.sections:
        add(Arm(REFERENCE, "federate", {}, ("backbone",), f"Swin ({ref_arch})"))
        for role in ("resnet", "vit"):
            arch = cfg.backbones[role]
            add(Arm(f"backbone-{role}", "federate", {"model.arch": arch, **init(arch)},
                    ("backbone",), f"{role} ({arch})"))  # fmt: skip
    if "method" in cfg.sections:
        for method in cfg.methods:
            if method == cfg.reference.get("finetune.method", "lora"):
                add(Arm(REFERENCE, "federate", {}, ("method",), f"{method} (reference)"))
            else:
                add(Arm(f"method-{method}", "federate", {"finetune.method": method},
                        ("method",), method))  # fmt: skip
    if "compression" in cfg.sections:
        for codec in cfg.codecs:
            if codec == cfg.reference.get("compress.uplink", "fp32"):
                add(Arm(REFERENCE, "federate", {}, ("compression",), f"{codec} (reference)"))
            elif codec == "mixed":
                mix = ";".join(
                    f"{site}={cfg.mixed_codecs[i % len(cfg.mixed_codecs)]}"
                    for i, site in enumerate(sorted(paths.sites))
                )
                add(Arm("uplink-mixed", "federate", {"compress.site_codecs": mix},
                        ("compression",), f"mixed per site ({mix})"))  # fmt: skip
            else:
                add(Arm(f"uplink-{codec}", "federate", {"compress.uplink": codec},
                        ("compression",), codec))  # fmt: skip
    if "input" in cfg.sections:
        add(Arm(REFERENCE, "federate", {}, ("input",), "lesion crops (reference)"))
        add(Arm("input-organ", "federate", {"data.cache": paths.organ_cache}, ("input",),
                "whole-organ slices"))  # fmt: skip
    if "aggregator" in cfg.sections:
        for agg in cfg.aggregators:
            if agg == cfg.reference.get("fl.strategy", "fedadam"):
                add(Arm(REFERENCE, "federate", {}, ("aggregator",), f"{agg} (reference)"))
                continue
            over: dict[str, Any] = {"fl.strategy": agg}
            if agg == "fedprox":
                over["train.prox_mu"] = cfg.prox_mu
            add(Arm(f"agg-{agg}", "federate", over, ("aggregator",), agg))
    if "pretraining" in cfg.sections:
        add(Arm(REFERENCE, "federate", {}, ("pretraining",), "pre-trained (reference)"))
        add(Arm("init-scratch", "federate", {"model.foundation": ""}, ("pretraining",),
                "random init"))  # fmt: skip
    if "baselines" in cfg.sections:
        add(Arm(REFERENCE, "federate", {}, ("baselines",), "federated (reference)"))
        add(Arm("centralized", "centralize", {}, ("baselines",), "centralized (pooled data)"))
        add(Arm("local-only", "local", {}, ("baselines",), "local-only (each site alone)"))
    if "loso" in cfg.sections:
        add(Arm(REFERENCE, "federate", {}, ("loso",), "all sites train (reference)"))
        for site in sorted(paths.sites)[: cfg.loso_holdouts]:
            add(Arm(f"loso-{site}", "federate",
                    {"data.partition": "loso", "data.holdout_site": site}, ("loso",),
                    f"{site} never trains"))  # fmt: skip
    return arms


def build_arms(cfg: StudyConfig, paths: StudyPaths) -> list[Arm]:
    """Arms in first-seen order; an id used by several sections is one arm (shared runs)."""
    merged: dict[str, Arm] = {}
    for arm in _arm_specs(cfg, paths):
        if arm.id in merged:
            old = merged[arm.id]
            if old.overrides != arm.overrides or old.kind != arm.kind:
                raise ValueError(f"arm {arm.id!r} is defined twice with different settings")
            merged[arm.id] = Arm(old.id, old.kind, old.overrides,
                                 old.sections + arm.sections, old.label)  # fmt: skip
        else:
            merged[arm.id] = arm
    return list(merged.values())


def reference_config(cfg: StudyConfig, paths: StudyPaths) -> RunConfig:
    base = dict(cfg.reference)
    base["data.cache"] = paths.lesion_cache
    arch = str(base.get("model.arch", "swin_tiny"))
    base["model.foundation"] = paths.foundations.get(arch, "") if cfg.pretrain.enabled else ""
    base.setdefault("eval.n_boot", cfg.prereg.n_boot)
    return RunConfig.from_flat(base)


def cell_id(arm: str, lr: float, n_lrs: int) -> str:
    return arm if n_lrs == 1 else f"{arm}@lr{lr:g}"


def build_cells(cfg: StudyConfig, paths: StudyPaths) -> tuple[list[Arm], list[Cell]]:
    """Every (arm, learning rate) cell; each arm gets the same learning rates (fair tuning)."""
    ref = reference_config(cfg, paths)
    arms = build_arms(cfg, paths)
    cells = []
    for arm in arms:
        for lr in cfg.learning_rates:
            config = ref.replace(**arm.overrides, **{"train.lr": lr})
            cells.append(Cell(cell_id(arm.id, lr, len(cfg.learning_rates)), arm.id, arm.kind,
                              lr, config))  # fmt: skip
    return arms, cells
