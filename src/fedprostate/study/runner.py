"""``fedprostate study``: prepare the inputs once, run every cell (resumably), pick each arm's
learning rate on validation, test the claims and write the report.

Layout of a study folder::

    DIR/study.json            the configuration's pre-registered values + the cell plan
    DIR/data/raw/             synthetic federation (when no cache is given)
    DIR/data/lesion/ organ/   crop caches
    DIR/foundation/<arch>.safetensors   self-supervised foundations
    DIR/cells/<cell-id>/      one run folder per cell (summary.json = finished)
    DIR/arms.json             chosen cell per arm (best validation AUROC over the LR budget)
    DIR/claims.json           verdicts
    DIR/report.html, report.md
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedprostate.data.cache import load_index
from fedprostate.data.synth.sites import make_site_profiles
from fedprostate.runs import pooled
from fedprostate.runs.federated import federate
from fedprostate.study.cells import Arm, Cell, StudyPaths, build_cells
from fedprostate.study.config import StudyConfig
from fedprostate.study.estimate import (
    CROPS_PER_PATIENT,
    cell_seconds,
    format_seconds,
    inputs_seconds,
)
from fedprostate.study.inputs import ensure_caches, ensure_foundations
from fedprostate.study.report import write_study_report


def run_function(kind: str):
    """The training entry point of a cell kind (looked up at call time: tests replace it)."""
    if kind == "federate":
        return federate

    return pooled.centralize if kind == "centralize" else pooled.local_only


def planned_paths(cfg: StudyConfig, out: Path) -> StudyPaths:
    """Where inputs are (given) or will be written; site names without writing anything."""
    data = out / "data"
    lesion = cfg.data.cache or str((data / "lesion").resolve())
    organ = cfg.data.organ_cache or str((data / "organ").resolve())
    if cfg.data.cache and (Path(cfg.data.cache) / "meta.json").exists():
        sites = tuple(
            json.loads((Path(cfg.data.cache) / "meta.json").read_text(encoding="utf-8"))["sites"]
        )
    else:
        profiles = make_site_profiles(cfg.data.sites, cfg.data.patients, cfg.data.preset)
        sites = tuple(p.name for p in profiles)
    archs = {str(cfg.reference.get("model.arch", "swin_tiny"))}
    if "backbone" in cfg.sections:
        archs |= {cfg.backbones["resnet"], cfg.backbones["vit"]}
    foundations = (
        {a: str((out / "foundation" / f"{a}.safetensors").resolve()) for a in sorted(archs)}
        if cfg.pretrain.enabled
        else {}
    )
    return StudyPaths(lesion, organ, foundations, sites)


def _data_sizes(cfg: StudyConfig, cache: str, mode: str) -> tuple[float, float]:
    """(mean training rows per site, val + test rows): from the cache, else from the plan."""
    if (Path(cache) / "index.csv").exists():
        rows = load_index(cache)
        train = Counter(r["site"] for r in rows if r["split"] == "train")
        evaluated = sum(r["split"] in ("val", "test") for r in rows)
        return sum(train.values()) / max(len(train), 1), float(evaluated)
    crops = cfg.data.patients * CROPS_PER_PATIENT[mode]
    return 0.6 * crops / max(cfg.data.sites, 1), 0.4 * crops


def estimate(cfg: StudyConfig, cells: list[Cell], paths: StudyPaths) -> dict[str, float]:
    """Estimated seconds per cell (see ``fedprostate.study.estimate`` for the constants)."""
    n = len(paths.sites)
    out = {}
    for c in cells:
        mode = "organ" if c.config.data.cache == paths.organ_cache else "lesion"
        per_site, evaluated = _data_sizes(cfg, c.config.data.cache, mode)
        clients = n - 1 if c.config.data.partition == "loso" else n
        out[c.id] = cell_seconds(c, clients, per_site, evaluated)
    return out


def _inputs_estimate(cfg: StudyConfig, paths: StudyPaths) -> float:
    missing_caches = [
        p
        for p, needed in ((paths.lesion_cache, True), (paths.organ_cache, "input" in cfg.sections))
        if needed and not (Path(p) / "index.csv").exists()
    ]
    missing_archs = [a for a, p in paths.foundations.items() if not Path(p).exists()]
    synth = not cfg.data.cache and bool(missing_caches or missing_archs)
    return inputs_seconds(
        cfg.data.patients if synth else 0,
        cfg.data.unlabeled_studies if synth else 0,
        len(missing_caches),
        len(missing_archs),
        cfg.data.unlabeled_studies * cfg.pretrain.per_study,
        cfg.pretrain.epochs,
        cfg.data.crop,
    )


def plan_table(arms: list[Arm], cells: list[Cell], seconds: dict, out: Path) -> Table:
    table = Table(title=f"study cells ({len(cells)} runs, {len(arms)} arms)")
    for col in ("cell", "kind", "sections", "changes vs reference", "lr", "est.", "status"):
        table.add_column(col)
    by_arm = {a.id: a for a in arms}
    for c in cells:
        arm = by_arm[c.arm]
        changes = ", ".join(f"{k}={v}" for k, v in arm.overrides.items()) or "–"
        done = (c.folder(out) / "summary.json").exists()
        table.add_row(c.id, c.kind, ",".join(arm.sections), changes[:60], f"{c.lr:g}",
                      format_seconds(seconds[c.id]), "done" if done else "todo")  # fmt: skip
    return table


def check_preregistration(cfg: StudyConfig, out: Path) -> None:
    """Write the pre-registered values once; a resumed study must not change them."""
    path = out / "study.json"
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8")).get("preregistered")
        if saved is not None and saved != cfg.preregistered():
            raise ValueError(
                f"{path}: pre-registered values {saved} differ from the config's "
                f"{cfg.preregistered()}; start a new study folder instead of changing them"
            )


def write_plan(cfg: StudyConfig, arms: list[Arm], cells: list[Cell], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plan = {
        "name": cfg.name,
        "source": cfg.source,
        "preregistered": cfg.preregistered(),
        "sections": list(cfg.sections),
        "notes": list(cfg.notes),
        "arms": [
            {"id": a.id, "kind": a.kind, "sections": list(a.sections), "label": a.label,
             "overrides": a.overrides, "cells": [c.id for c in cells if c.arm == a.id]}
            for a in arms
        ],
    }  # fmt: skip
    (out / "study.json").write_text(json.dumps(plan, indent=1), encoding="utf-8")


def run_cells(cells: list[Cell], out: Path, console: Console) -> dict[str, str]:
    """Run every unfinished cell; a finished cell (summary.json present) is never rerun."""
    status = {}
    for i, cell in enumerate(cells, 1):
        folder = cell.folder(out)
        if (folder / "summary.json").exists():
            status[cell.id] = "skipped (finished)"
            console.print(f"[dim]{i}/{len(cells)} {cell.id}: finished earlier, skipped[/dim]")
            continue
        console.print(f"[bold]{i}/{len(cells)} {cell.id}[/bold] ({cell.kind}, lr {cell.lr:g})")
        t0 = time.time()
        run_function(cell.kind)(cell.config, folder)
        status[cell.id] = f"ran in {time.time() - t0:.0f} s"
        console.print(f"   done in {time.time() - t0:.0f} s")
    return status


def choose_arms(arms: list[Arm], cells: list[Cell], out: Path) -> dict[str, dict]:
    """Each arm's cell with the best validation AUROC (the same LR budget for every arm)."""
    chosen = {}
    for arm in arms:
        tried = []
        for c in (c for c in cells if c.arm == arm.id):
            summary_path = c.folder(out) / "summary.json"
            if not summary_path.exists():
                continue
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            val = summary.get("val_auroc", summary.get("mean_pooled_test_auroc"))
            if summary.get("kind") == "local":  # no pooled validation score: use own-site test
                val = summary.get("test_auroc")
            tried.append((c, val if val is not None and math.isfinite(val) else -1.0))
        if tried:
            best, val = max(tried, key=lambda t: t[1])
            chosen[arm.id] = {
                "cell": best.id,
                "lr": best.lr,
                "selection_auroc": val,
                "tried": {c.id: v for c, v in tried},
            }
    return chosen


def prepare_inputs(cfg: StudyConfig, out: Path, paths: StudyPaths, console: Console) -> None:
    """Synthesize, prepare crop caches and pre-train foundations that do not exist yet."""

    needs_organ = "input" in cfg.sections
    ensure_caches(cfg, out, paths, needs_organ, console)
    ensure_foundations(cfg, out, paths, console)


def run_study(
    config: str | Path,
    out: str | Path,
    dry_run: bool = False,
    console: Console | None = None,
    report: bool = True,
) -> Path | None:
    """Run (or with ``dry_run`` only list and time) the study; returns the report path
    (None for a dry run or with ``report=False``)."""
    console = console or Console()
    cfg = StudyConfig.load(config)
    out = Path(out)
    paths = planned_paths(cfg, out)
    arms, cells = build_cells(cfg, paths)
    seconds = estimate(cfg, cells, paths)
    console.print(plan_table(arms, cells, seconds, out))
    todo = [c for c in cells if not (c.folder(out) / "summary.json").exists()]
    prep = _inputs_estimate(cfg, paths)
    console.print(
        f"estimated time of the {len(todo)} unfinished cells: "
        f"{format_seconds(sum(seconds[c.id] for c in todo))}, plus {format_seconds(prep)} "
        "for data and pre-training not done yet (calibrated on an idle-to-moderately loaded "
        "2-core machine; see fedprostate.study.estimate)"
    )
    if dry_run:
        return None
    check_preregistration(cfg, out)
    write_plan(cfg, arms, cells, out)
    prepare_inputs(cfg, out, paths, console)
    run_cells(cells, out, console)
    (out / "arms.json").write_text(
        json.dumps(choose_arms(arms, cells, out), indent=1), encoding="utf-8"
    )
    if not report:
        return None

    page = write_study_report(out)
    console.print(f"[green]study report:[/green] {page.resolve()}")
    return page
