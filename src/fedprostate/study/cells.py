"""The study's arms and cells.

An *arm* is one setting under test (``method-full``: the reference arm with full fine-tuning);
a *cell* is one run of an arm at one learning rate and one training seed, in its own folder
``DIR/cells/<cell-id>/``. Tuning cells run every learning rate with the first seed; once an
arm's learning rate is chosen (on validation only), its seed cells run that rate with the other
seeds, so every arm ends with one run per seed at its chosen rate. Arms are named by what they change relative to the shared reference
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
DISTILL_ARM = "distill-student"  # needs the reference arm's exported bundle (paths.teacher)
KINDS = ("federate", "centralize", "local")


@dataclass(frozen=True)
class StudyPaths:
    """Where the study's inputs live (existing, or to be written by the runner)."""

    lesion_cache: str
    organ_cache: str
    foundations: dict[str, str]  # arch -> foundation checkpoint (.safetensors)
    sites: tuple[str, ...]
    teacher: str = ""  # distillation: the reference arm's exported bundle (written by the runner)


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
    seed: int = 0

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
    if "distillation" in cfg.sections:
        add(Arm(REFERENCE, "federate", {}, ("distillation",), "teacher (reference)"))
        add(Arm(DISTILL_ARM, "federate",
                {"model.arch": cfg.student, "finetune.method": "full", "model.foundation": "",
                 "distill.teacher": paths.teacher}, ("distillation",),
                f"{cfg.student} distilled from the reference"))  # fmt: skip
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


def cell_id(arm: str, lr: float, n_lrs: int, seed: int | None = None) -> str:
    """``arm`` [``@lr<lr>`` with several rates] [``@seed<s>`` for a seed cell]."""
    base = arm if n_lrs == 1 else f"{arm}@lr{lr:g}"
    return base if seed is None else f"{base}@seed{seed}"


def build_cells(cfg: StudyConfig, paths: StudyPaths) -> tuple[list[Arm], list[Cell]]:
    """The tuning cells: every (arm, learning rate) with the first seed; each arm gets the same
    learning rates (fair tuning)."""
    ref = reference_config(cfg, paths)
    arms = build_arms(cfg, paths)
    cells = []
    first = cfg.seeds[0]
    for arm in arms:
        for lr in cfg.learning_rates:
            config = ref.replace(**arm.overrides, **{"train.lr": lr, "seed": first})
            cells.append(Cell(cell_id(arm.id, lr, len(cfg.learning_rates)), arm.id, arm.kind,
                              lr, config, first))  # fmt: skip
    return arms, cells


def seed_cells(cfg: StudyConfig, cells: list[Cell], chosen_lr: dict[str, float]) -> list[Cell]:
    """The other seeds of each arm at its chosen learning rate (``chosen_lr``: arm -> rate,
    chosen on validation). An arm without a choice gets none."""
    out = []
    n_lrs = len(cfg.learning_rates)
    for cell in cells:
        if chosen_lr.get(cell.arm) != cell.lr:
            continue
        for seed in cfg.seeds[1:]:
            out.append(Cell(cell_id(cell.arm, cell.lr, n_lrs, seed), cell.arm, cell.kind,
                            cell.lr, cell.config.replace(seed=seed), seed))  # fmt: skip
    return out
