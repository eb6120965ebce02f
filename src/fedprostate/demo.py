"""``fedprostate demo`` (``make demo``): the whole pipeline on a fresh clone in minutes.

1. synthesize a small multi-site federation in the PI-CAI layout + an unlabeled pool,
2. prepare lesion crops (crop cache, patient-level splits),
3. pre-train a reduced Swin self-supervised (SimMIM) on the unlabeled pool only,
4. fine-tune it federated (Flower simulation): LoRA + FedAdam, int8-quantized uplink,
5. evaluate (patient-bootstrap CIs, mean-ADC and PSA-density baselines) and write the report.

Sizes live in ``configs/demo-plan.toml`` (data and pre-training) and ``configs/demo.toml`` (an
ordinary run configuration, usable by ``fedprostate federate``). Every step is skipped when its output exists, so an
interrupted demo continues where it stopped.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedprostate.config import RunConfig, flatten
from fedprostate.report.run_report import fmt_ci, write_run_report
from fedprostate.runs.federated import federate
from fedprostate.study.cells import StudyPaths
from fedprostate.study.config import DataPlan, PretrainPlan, StudyConfig
from fedprostate.study.inputs import ensure_caches, ensure_foundations, synthesize_raw

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"
DEFAULT_PLAN = DEFAULT_CONFIG.with_name("demo-plan.toml")

# Used when configs/demo.toml is absent (an installed package without the repository).
_FALLBACK = {
    "data.partition": "natural",
    "model.arch": "swin_test",
    "model.crop": 32,
    "finetune.method": "lora",
    "train.epochs": 2,
    "train.lr": 3e-3,
    "train.batch_size": 16,
    "fl.strategy": "fedadam",
    "fl.rounds": 30,
    "fl.server_lr": 0.02,
    "compress.uplink": "int8",
    "eval.n_boot": 1000,
}


@dataclass(frozen=True)
class DemoPlan:
    sites: int = 6
    patients: int = 240
    unlabeled: int = 40
    preset: str = "small"
    seed: int = 0
    spacing: float = 1.0
    pretrain_method: str = "simmim"
    pretrain_epochs: int = 8
    pretrain_batch_size: int = 32
    pretrain_lr: float = 1e-3
    pretrain_per_study: int = 16


QUICK = {"sites": 3, "patients": 30, "unlabeled": 6, "pretrain_epochs": 1, "pretrain_per_study": 4}
QUICK_RUN = {"fl.rounds": 2, "train.epochs": 1, "eval.n_boot": 200}


def load_demo_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    quick: bool = False,
    plan_path: str | Path | None = None,
) -> tuple[DemoPlan, RunConfig]:
    """The demo plan (``configs/demo-plan.toml``) and run configuration (``configs/demo.toml``).

    Overrides: ``demo.patients=60`` changes the plan, ``fl.rounds=3`` the run.
    """
    path = Path(path) if path else DEFAULT_CONFIG
    plan_path = Path(plan_path) if plan_path else DEFAULT_PLAN
    for given, default in ((path, DEFAULT_CONFIG), (plan_path, DEFAULT_PLAN)):
        if not given.exists() and given != default:
            raise FileNotFoundError(f"{given}: no such demo configuration")
    plan_values = (
        dict(tomllib.loads(plan_path.read_text(encoding="utf-8")).get("demo", {}))
        if plan_path.exists()
        else {}
    )
    run_flat = (
        flatten(tomllib.loads(path.read_text(encoding="utf-8")))
        if path.exists()
        else dict(_FALLBACK)
    )
    if quick:
        plan_values.update(QUICK)
        run_flat.update(QUICK_RUN)
    run_overrides = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key = key.strip()
        if key.startswith("demo."):
            plan_values[key[5:]] = tomllib.loads(f"v = {value}")["v"] if value else value
        else:
            run_overrides.append(item)
    known = {f.name for f in fields(DemoPlan)}
    unknown = set(plan_values) - known
    if unknown:
        raise ValueError(f"unknown [demo] keys {sorted(unknown)}; known: {sorted(known)}")
    overridden = RunConfig.load(None, run_overrides).to_flat()
    run_flat.update(
        {k: overridden[k] for k in (i.partition("=")[0].strip() for i in run_overrides)}
    )
    return DemoPlan(**plan_values), RunConfig.from_flat(run_flat)


def _step(console: Console, n: int, text: str) -> float:
    console.rule(f"[bold]step {n}/5[/bold] {text}")
    return time.time()


def run_demo(
    out: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    quick: bool = False,
    console: Console | None = None,
) -> dict:
    """Run the demo into ``out``; returns {"report", "summary", "timings"}.

    The demo process uses one torch thread (simulated clients get their own, ``train.threads``):
    on a shared 2-core machine two OpenMP threads that get descheduled spin-wait for each other,
    which made pre-training 10x slower at load 14 here."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(out, config, overrides, quick, console)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out, config, overrides, quick, console) -> dict:
    console = console or Console()
    plan, run_cfg = load_demo_config(config, overrides, quick)
    out = Path(out).resolve()
    arch, crop = run_cfg.model.arch, run_cfg.model.crop
    # The study's input steps do exactly what the demo needs: reuse them through a StudyConfig.
    study = StudyConfig(
        name="demo", sections=(), prereg=None,  # type: ignore[arg-type]
        data=DataPlan(preset=plan.preset, sites=plan.sites, patients=plan.patients,
                      unlabeled_studies=plan.unlabeled, seed=plan.seed, crop=crop,
                      spacing=plan.spacing),
        pretrain=PretrainPlan(method=plan.pretrain_method, epochs=plan.pretrain_epochs,
                              batch_size=plan.pretrain_batch_size, lr=plan.pretrain_lr,
                              per_study=plan.pretrain_per_study),
        learning_rates=(run_cfg.train.lr,), seeds=(run_cfg.seed,), reference={}, backbones={},
        methods=(), codecs=(),
        mixed_codecs=(), aggregators=(), prox_mu=0.0, loso_holdouts=0,
    )  # fmt: skip
    paths = StudyPaths(
        lesion_cache=str(out / "data" / "lesion"),
        organ_cache="",
        foundations={arch: str(out / "foundation" / f"{arch}.safetensors")},
        sites=(),
    )
    timings, t_all = {}, time.time()
    t = _step(console, 1, f"synthesize {plan.sites} sites, {plan.patients} patients "
                          f"+ {plan.unlabeled} unlabeled studies")  # fmt: skip

    synthesize_raw(out / "data" / "raw", study, console)
    timings["synthesize"] = time.time() - t
    t = _step(console, 2, f"prepare lesion crops ({crop} px at {plan.spacing} mm)")
    ensure_caches(study, out, paths, needs_organ=False, console=console)
    timings["prepare"] = time.time() - t
    t = _step(console, 3, f"self-supervised pre-training of {arch} ({plan.pretrain_method}) "
                          "on the unlabeled pool")  # fmt: skip
    ensure_foundations(study, out, paths, console)
    timings["pretrain"] = time.time() - t
    t = _step(console, 4, f"federated fine-tuning: {run_cfg.finetune.method} + "
                          f"{run_cfg.fl.strategy}, {run_cfg.compress.uplink} uplink, "
                          f"{run_cfg.fl.rounds} rounds (Flower simulation)")  # fmt: skip
    run_dir = out / "run"
    cfg = run_cfg.replace(**{"data.cache": paths.lesion_cache,
                             "model.foundation": paths.foundations[arch]})  # fmt: skip
    if (run_dir / "summary.json").exists():
        import json

        console.print(f"[dim]{run_dir}: finished earlier, kept[/dim]")
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    else:
        summary = federate(cfg, run_dir)
    timings["federate"] = time.time() - t
    t = _step(console, 5, "evaluate and write the report")

    page = write_run_report(run_dir)
    timings["report"] = time.time() - t
    timings["total"] = time.time() - t_all
    _print_results(console, run_dir, timings)
    console.print(f"\n[bold green]report:[/bold green] {page}")
    console.print(f"[bold green]markdown:[/bold green] {page.with_suffix('.md')}")
    return {"report": page, "summary": summary, "timings": timings}


def _print_results(console: Console, run_dir: Path, timings: dict) -> None:
    import json

    ev = json.loads((run_dir / "evaluation.json").read_text(encoding="utf-8"))
    table = Table(title="demo results (test split, 95% CI by patient bootstrap)")
    for col in ("model", "AUROC lesion", "AUROC patient", "AP lesion"):
        table.add_column(col)
    models = {"federated Swin + LoRA (int8)": ev["model"], **ev["baselines"]}
    for name, r in models.items():
        table.add_row(name, fmt_ci(r["lesion"]["auroc"]), fmt_ci(r["patient"]["auroc"]),
                      fmt_ci(r["lesion"]["ap"]))  # fmt: skip
    console.print(table)
    console.print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
