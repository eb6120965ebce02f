"""``fedprostate data synth``: a multi-site bpMRI federation written in the real public layouts.

Each patient is generated from its own generator seeded by (seed, site index, patient index), so
studies are independent and can be produced by a process pool in any order with identical bytes.
Site-level choices (which patients are csPCa-positive, which positives only carry a case-level label)
come from a per-site generator so prevalences are exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedprostate.data.formats.picai import MARKSHEET
from fedprostate.data.synth.exam import generate_study
from fedprostate.data.synth.sites import (
    _CATALOG,
    PRESET_DEFAULTS,
    SiteProfile,
    make_site_profiles,
    write_sites_csv,
)
from fedprostate.data.synth.writers import (
    FINDINGS,
    FINDINGS_COLUMNS,
    MARKSHEET_COLUMNS,
    PROSTATEX_COLUMNS,
    READER_COLUMNS,
    READER_FINDINGS,
    finding_rows,
    marksheet_row,
    prostatex_rows,
    reader_rows,
    write_csv,
    write_picai_images,
    write_picai_labels,
    write_picai_unlabeled,
    write_prostatex_study,
)

LAYOUTS = ("picai", "prostatex")
CASE_LEVEL_ONLY_FRACTION = 0.08  # positives whose lesion mask is blank (case-level label only)
UNLABELED_PREVALENCE = 0.3
POOL_WORKERS_FROM = 200  # studies from which `workers` defaults to 2 processes on any preset
STUDIES = Path("truth/studies.csv")  # every labelled study with its case label (both layouts)
_FIRST_PATIENT_ID = 10000
_FIRST_STUDY_ID = 1000000
_SITE_STREAM = 7919  # keeps the per-site generator distinct from every patient generator
_UNLABELED_STREAM = 104729


@dataclass(frozen=True)
class _Task:
    profile: SiteProfile
    site_index: int
    patient_index: int
    global_index: int
    positive: bool
    case_level_only: bool
    unlabeled: bool


@dataclass
class SynthReport:
    out: Path
    layout: str
    sites: list[SiteProfile]
    n_studies: int = 0
    n_unlabeled: int = 0
    n_findings: int = 0  # the radiologists' marks (what the sites have)
    n_lesions: int = 0  # every lesion and false alarm of the ground truth
    seconds: float = 0.0
    bytes_written: int = 0
    per_site: dict[str, dict] = field(default_factory=dict)


def patient_rng(seed: int, site_index: int, patient_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, site_index, patient_index])


def plan_site(profile: SiteProfile, site_index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact-prevalence positive flags and case-level-only flags for one site."""
    rng = np.random.default_rng([seed, site_index, _SITE_STREAM])
    n = profile.n_patients
    positive = np.zeros(n, dtype=bool)
    positive[: int(round(profile.prevalence * n))] = True
    rng.shuffle(positive)
    case_only = positive & (rng.random(n) < CASE_LEVEL_ONLY_FRACTION)
    return positive, case_only


def _ids(layout: str, global_index: int) -> tuple[str, str]:
    if layout == "prostatex":
        return f"ProstateX-{global_index:04d}", str(_FIRST_STUDY_ID + global_index)
    return str(_FIRST_PATIENT_ID + global_index), str(_FIRST_STUDY_ID + global_index)


def _run_task(args: tuple[_Task, str, int, str]) -> dict:
    """Generate and write one study; returns its table rows (run in worker processes)."""
    task, out, seed, layout = args
    root = Path(out)
    if task.unlabeled:
        rng = np.random.default_rng([seed, _UNLABELED_STREAM, task.patient_index])
        pid, sid = _ids("picai", task.global_index)
        study = generate_study(task.profile, rng, task.positive, pid, sid)
        write_picai_unlabeled(root, study)
        return {"unlabeled": True}
    rng = patient_rng(seed, task.site_index, task.patient_index)
    pid, sid = _ids(layout, task.global_index)
    study = generate_study(task.profile, rng, task.positive, pid, sid)
    if layout == "picai":
        write_picai_images(root, study)
        write_picai_labels(root, study, task.case_level_only)
    else:
        write_prostatex_study(root, study, pid, seed, task.profile)
    return {
        "unlabeled": False,
        "marksheet": marksheet_row(study),
        "case_level_only": task.case_level_only and layout == "picai",
        "findings": finding_rows(study, task.case_level_only and layout == "picai"),
        "marks": reader_rows(study),
    }


def _tasks(profiles: list[SiteProfile], seed: int, unlabeled: int) -> list[_Task]:
    tasks, g = [], 0
    for s, prof in enumerate(profiles):
        positive, case_only = plan_site(prof, s, seed)
        for p in range(prof.n_patients):
            tasks.append(_Task(prof, s, p, g, bool(positive[p]), bool(case_only[p]), False))
            g += 1
    if unlabeled:
        # A public archive: scanners drawn from the whole catalog, patients of no site.
        archive = make_site_profiles(len(_CATALOG), max(len(_CATALOG), unlabeled), "small")
        rng = np.random.default_rng([seed, _UNLABELED_STREAM])
        which = rng.integers(0, len(archive), size=unlabeled)
        pos = rng.random(unlabeled) < UNLABELED_PREVALENCE
        for j in range(unlabeled):
            tasks.append(_Task(archive[which[j]], -1, j, g, bool(pos[j]), False, True))
            g += 1
    return tasks


def synthesize(
    out: str | Path,
    sites: int | None = None,
    patients: int | None = None,
    seed: int = 0,
    preset: str = "default",
    layout: str = "picai",
    unlabeled: int = 0,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SynthReport:
    """Write a synthetic federation under ``out``. ``sites``/``patients`` default to the preset's
    (default: 17 sites, 2040 patients; small: 5 sites, 100 patients). ``workers`` defaults to 2
    processes for the default preset or from ``POOL_WORKERS_FROM`` studies on, else 1
    (in-process). ``progress(done, total)``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} not in {LAYOUTS}")
    if unlabeled < 0:
        raise ValueError(f"--unlabeled must be >= 0, got {unlabeled}")
    defaults = PRESET_DEFAULTS.get(preset)
    if defaults is None:
        raise ValueError(f"preset {preset!r} not in {tuple(PRESET_DEFAULTS)}")
    sites = defaults["sites"] if sites is None else sites
    patients = defaults["patients"] if patients is None else patients
    profiles = make_site_profiles(sites, patients, preset)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tasks = _tasks(profiles, seed, unlabeled)
    args = [(t, str(root), seed, layout) for t in tasks]
    if workers is None:  # a big unlabeled pool is worth a second process on any preset
        workers = 2 if preset == "default" or len(args) >= POOL_WORKERS_FROM else 1
    results = []
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for r in pool.map(_run_task, args, chunksize=4):
                results.append(r)
                if progress:
                    progress(len(results), len(args))
    else:
        for a in args:
            results.append(_run_task(a))
            if progress:
                progress(len(results), len(args))
    labelled = [r for r in results if not r["unlabeled"]]
    findings = [f for r in labelled for f in r["findings"]]
    marks = [m for r in labelled for m in r["marks"]]
    write_sites_csv(root / "truth" / "sites.csv", profiles)
    write_csv(root / FINDINGS, FINDINGS_COLUMNS, findings)
    studies = [{"site": r["marksheet"]["center"], "patient_id": r["marksheet"]["patient_id"],
                "study_id": r["marksheet"]["study_id"], "case_csPCa": r["marksheet"]["case_csPCa"],
                "case_level_only": int(r["case_level_only"])} for r in labelled]  # fmt: skip
    write_csv(root / STUDIES, list(studies[0]) if studies else [], studies)
    if layout == "picai":
        write_csv(root / MARKSHEET, MARKSHEET_COLUMNS, [r["marksheet"] for r in labelled])
        write_csv(root / READER_FINDINGS, READER_COLUMNS, marks)
    else:
        write_csv(root / "ProstateX-Findings-Train.csv", PROSTATEX_COLUMNS, prostatex_rows(marks))
    report = SynthReport(root, layout, profiles, len(labelled), len(results) - len(labelled),
                         len(marks), len(findings))  # fmt: skip
    report.seconds = time.perf_counter() - start
    report.bytes_written = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    for prof in profiles:
        rows = [r["marksheet"] for r in labelled if r["marksheet"]["center"] == prof.name]
        report.per_site[prof.name] = {
            "patients": len(rows),
            "positives": sum(r["case_csPCa"] == "YES" for r in rows),
            "findings": sum(f["site"] == prof.name for f in findings if f["mark_id"]),
            "csPCa marked": sum(
                f["site"] == prof.name and bool(f["mark_id"]) and f["clinsig"] for f in findings
            ),
        }
    return report
