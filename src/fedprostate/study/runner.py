"""``fedprostate study``: prepare the inputs once, run every cell (resumably), pick each arm's
learning rate on validation, run its other seeds, test the claims and write the report.

Order: the tuning cells (every arm × learning rate, first seed); each arm's learning rate chosen
by validation AUROC only (``selection_score``: never a test number); the seed cells (every arm at
its chosen rate × the other seeds); the report. A cell that fails is named on one line, recorded
in ``cells/<id>/failed.json`` and skipped (a later run retries it).

Layout of a study folder::

    DIR/study.json            the configuration's pre-registered values + the cell plan
    DIR/data/raw/             synthetic federation (when no cache is given)
    DIR/data/lesion/ organ/   crop caches
    DIR/foundation/<arch>.safetensors   self-supervised foundations
    DIR/cells/<cell-id>/      one run folder per cell (summary.json = finished)
    DIR/arms.json             per arm: chosen learning rate (validation), its cell per seed
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
from fedprostate.runs.export import export_run
from fedprostate.runs.federated import federate
from fedprostate.study.cells import (
    DISTILL_ARM,
    REFERENCE,
    Arm,
    Cell,
    StudyPaths,
    build_cells,
    seed_cells,
)
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
    teacher = str((out / "teacher").resolve()) if "distillation" in cfg.sections else ""
    return StudyPaths(lesion, organ, foundations, sites, teacher)


def _data_sizes(cfg: StudyConfig, cache: str, mode: str) -> tuple[float, float, float]:
    """(mean training rows per site, val rows, test rows): from the cache, else from the plan."""
    if (Path(cache) / "index.csv").exists():
        rows = load_index(cache)
        train = Counter(r["site"] for r in rows if r["split"] == "train")
        val = sum(r["split"] == "val" for r in rows)
        test = sum(r["split"] == "test" for r in rows)
        return sum(train.values()) / max(len(train), 1), float(val), float(test)
    crops = cfg.data.patients * CROPS_PER_PATIENT[mode]
    train, val, test = cfg.data.fractions()
    return train * crops / max(cfg.data.sites, 1), val * crops, test * crops


def estimate(cfg: StudyConfig, cells: list[Cell], paths: StudyPaths) -> dict[str, float]:
    """Estimated seconds per cell (see ``fedprostate.study.estimate`` for the constants)."""
    n = len(paths.sites)
    out, sizes = {}, {}
    for c in cells:
        cache = c.config.data.cache
        if cache not in sizes:  # one read of a kept cache's index, not one per cell
            mode = "organ" if cache == paths.organ_cache else "lesion"
            sizes[cache] = _data_sizes(cfg, cache, mode)
        per_site, val, test = sizes[cache]
        clients = n - 1 if c.config.data.partition == "loso" else n
        out[c.id] = cell_seconds(c, clients, per_site, val, test)
    return out


def _inputs_estimate(cfg: StudyConfig, paths: StudyPaths) -> float:
    missing_caches = tuple(
        mode
        for mode, p, needed in (
            ("lesion", paths.lesion_cache, True),
            ("organ", paths.organ_cache, "input" in cfg.sections),
        )
        if needed and not (Path(p) / "index.csv").exists()
    )
    missing_archs = [a for a, p in paths.foundations.items() if not Path(p).exists()]
    synth = not cfg.data.cache and bool(missing_caches or missing_archs)
    return inputs_seconds(
        cfg.data.patients if synth else 0,
        cfg.data.unlabeled_studies if synth else 0,
        missing_caches,
        len(missing_archs),
        cfg.data.unlabeled_studies * cfg.pretrain.per_study,
        cfg.pretrain.epochs,
        cfg.data.crop,
    )


def plan_table(
    arms: list[Arm],
    cells: list[Cell],
    seconds: dict,
    out: Path,
    provisional: set[str] = frozenset(),
) -> Table:
    table = Table(title=f"study cells ({len(cells)} runs, {len(arms)} arms)")
    for col in ("cell", "kind", "sections", "changes vs reference", "lr", "seed", "est.", "status"):
        table.add_column(col)
    by_arm = {a.id: a for a in arms}
    for c in cells:
        arm = by_arm[c.arm]
        changes = ", ".join(f"{k}={v}" for k, v in arm.overrides.items()) or "–"
        done = (c.folder(out) / "summary.json").exists()
        lr = "chosen on val." if c.id in provisional else f"{c.lr:g}"
        table.add_row(c.id, c.kind, ",".join(arm.sections), changes[:60], lr, str(c.seed),
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
    """Run every unfinished cell; a finished cell (summary.json present) is never rerun.

    A cell that raises is reported on one line, recorded in its ``failed.json`` and skipped."""
    status = {}
    for i, cell in enumerate(cells, 1):
        folder = cell.folder(out)
        if (folder / "summary.json").exists():
            status[cell.id] = "skipped (finished)"
            console.print(f"[dim]{i}/{len(cells)} {cell.id}: finished earlier, skipped[/dim]")
            continue
        console.print(f"[bold]{i}/{len(cells)} {cell.id}[/bold] ({cell.kind}, lr {cell.lr:g}, "
                      f"seed {cell.seed})")  # fmt: skip
        t0 = time.time()
        try:
            run_function(cell.kind)(cell.config, folder)
        except Exception as exc:  # one bad cell must not end a three-hour study
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            status[cell.id] = f"failed: {reason}"
            console.print(f"[red]   cell {cell.id} failed, skipped: {reason}[/red]")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "failed.json").write_text(
                json.dumps({"cell": cell.id, "error": reason}), encoding="utf-8"
            )
            continue
        (folder / "failed.json").unlink(missing_ok=True)
        status[cell.id] = f"ran in {time.time() - t0:.0f} s"
        console.print(f"   done in {time.time() - t0:.0f} s")
    return status


def read_summary(folder: Path) -> dict | None:
    path = folder / "summary.json"
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def selection_score(summary: dict) -> float:
    """What an arm's learning rate is chosen by: the run's validation AUROC (federated and
    centralized: pooled validation findings at the validation-chosen round; local-only: every
    site's own validation findings at that site's validation-chosen round). Only the key
    ``val_auroc`` is read: no test number can reach a choice. Missing or undefined: -inf."""
    val = summary.get("val_auroc")
    return float(val) if isinstance(val, int | float) and math.isfinite(val) else -math.inf


def choose_arms(arms: list[Arm], cells: list[Cell], out: Path) -> dict[str, dict]:
    """Each arm's tuning cell with the best validation AUROC (ties: the first learning rate)."""
    chosen = {}
    for arm in arms:
        tried = []
        for c in (c for c in cells if c.arm == arm.id):
            summary = read_summary(c.folder(out))
            if summary is not None:
                tried.append((c, selection_score(summary)))
        if tried:
            best, val = max(tried, key=lambda t: t[1])
            chosen[arm.id] = {
                "cell": best.id,
                "lr": best.lr,
                "selection_auroc": val if math.isfinite(val) else None,
                "selected_on": "validation AUROC",
                "tried": {c.id: (v if math.isfinite(v) else None) for c, v in tried},
                "seeds": {str(best.seed): best.id},
            }
    return chosen


def add_seed_runs(chosen: dict[str, dict], extra: list[Cell], out: Path) -> dict[str, dict]:
    """Record each arm's finished seed cells (at its chosen rate) under ``seeds``."""
    for cell in extra:
        if cell.arm in chosen and (cell.folder(out) / "summary.json").exists():
            chosen[cell.arm]["seeds"][str(cell.seed)] = cell.id
    return chosen


def prepare_inputs(cfg: StudyConfig, out: Path, paths: StudyPaths, console: Console) -> None:
    """Synthesize, prepare crop caches and pre-train foundations that do not exist yet."""

    needs_organ = "input" in cfg.sections
    ensure_caches(cfg, out, paths, needs_organ, console)
    ensure_foundations(cfg, out, paths, console)


def ensure_teacher(
    arms: list[Arm], cells: list[Cell], out: Path, paths: StudyPaths, console: Console
) -> bool:
    """Export the reference arm's validation-chosen tuning cell as the distillation teacher
    (``paths.teacher``); False (one line, distillation skipped) when that is impossible."""
    if (Path(paths.teacher) / "bundle.json").exists():
        return True
    chosen = choose_arms([a for a in arms if a.id == REFERENCE], cells, out).get(REFERENCE)
    if chosen is None:
        console.print("[red]distillation skipped: the reference arm has no finished cell[/red]")
        return False
    try:
        export_run(out / "cells" / chosen["cell"], paths.teacher, formats=("bundle",))
    except Exception as exc:  # a failed export must not end the study
        console.print(f"[red]distillation skipped: teacher export failed: {exc}[/red]")
        return False
    console.print(f"teacher for distillation: {chosen['cell']} exported to {paths.teacher}")
    return True


def planned_seed_cells(
    cfg: StudyConfig, arms: list[Arm], cells: list[Cell], out: Path
) -> tuple[list[Cell], set[str]]:
    """Seed cells at each arm's chosen rate; arms not chosen yet get the first rate as a
    placeholder (their ids are returned apart: the dry run marks them provisional)."""
    chosen = {a: c["lr"] for a, c in choose_arms(arms, cells, out).items()}
    provisional = {a.id for a in arms if a.id not in chosen and len(cfg.learning_rates) > 1}
    lrs = {a.id: chosen.get(a.id, cfg.learning_rates[0]) for a in arms}
    extra = seed_cells(cfg, cells, lrs)
    return extra, {c.id for c in extra if c.arm in provisional}


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
    extra, provisional = planned_seed_cells(cfg, arms, cells, out)
    seconds = estimate(cfg, cells + extra, paths)
    console.print(plan_table(arms, cells + extra, seconds, out, provisional))
    todo = [c for c in cells + extra if not (c.folder(out) / "summary.json").exists()]
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
    run_cells([c for c in cells if c.arm != DISTILL_ARM], out, console)
    if any(c.arm == DISTILL_ARM for c in cells) and ensure_teacher(
        arms, cells, out, paths, console
    ):
        run_cells([c for c in cells if c.arm == DISTILL_ARM], out, console)
    chosen = choose_arms(arms, cells, out)  # validation only
    extra = seed_cells(cfg, cells, {a: c["lr"] for a, c in chosen.items()})
    run_cells(extra, out, console)
    (out / "arms.json").write_text(
        json.dumps(add_seed_runs(chosen, extra, out), indent=1), encoding="utf-8"
    )
    if not report:
        return None

    page = write_study_report(out)
    console.print(f"[green]study report:[/green] {page.resolve()}")
    return page
