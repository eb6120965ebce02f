"""The bad-input corpus: small datasets in every layout, each damaged in one known way, with the
outcome ``data prepare`` must give (rejected with reason X, or kept).

One clean base dataset per format (PI-CAI, ProstateX DICOM, Prostate158, generic CSV) is written
once from the phantoms of ``mri_fixtures`` and checked clean (every study kept, nothing
rejected). A :class:`Case` copies its base, applies ``damage`` and runs ``prepare``;
:func:`run_case` sorts the result into: flagged (the study is rejected), right reason (every text
of ``reason`` is in the rejection, none of ``wrong``), silently kept, crashed (an exception or an
"unexpected ..." reason) and good studies lost (an undamaged study, or a case expected to be kept,
missing from the cache).

The cases live in ``bad_corpus_cases.py``; a new input problem (e.g. a findings table of the
clinical task) is one more ``Case(...)`` appended to ``CASES`` there, with a new base added to
``BASES`` if it needs another layout. ``tests/data/test_bad_corpus.py`` asserts every case;
``benchmarks/bad_input_corpus.py`` prints the table with counts.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from corruptions import series_files, set_b_value
from fedprostate.data.cache import load_index, load_rejected
from fedprostate.data.prepare import prepare
from fedprostate.records.csv_cells import FORMULA_START
from mri_fixtures import (
    CENTRE,
    Grid,
    Phantom,
    picai_phantoms,
    rotation,
    write_generic,
    write_picai,
    write_prostate158,
    write_prostatex,
)

PREPARE = {"crop": 16, "spacing": 1.0, "progress": False}


def _lesion(dx: float = 0.0, isup: int = 3):
    return (tuple(CENTRE + np.array([dx, 2.0, 0.0])), 4.0, isup)


def _write_prostatex(root: Path) -> Path:
    oblique = Grid((56, 56, 12), (1.0, 1.0, 3.0), rotation(0.15, -0.1, 0.2))
    phantoms = [
        Phantom("ProstateX-0000", "1", lesions=[_lesion()], t2_grid=oblique),
        Phantom("ProstateX-0001", "1", seed=1, lesions=[_lesion(-3, 2)], benign=[(tuple(CENTRE - 5.0), "TZ")]),
    ]  # fmt: skip
    write_prostatex(root, phantoms)
    for p in phantoms:  # a high-b series whose header gives its b-value
        for f in series_files(root, p.patient_id, "ep2d_diff_tra_CALC_BVAL"):
            set_b_value(f, 1400)
    return root


BASES: dict[str, Callable[[Path], Path]] = {
    # PI-CAI with the site's radiology table (radiology/findings.csv) ...
    "picai": lambda root: write_picai(root, picai_phantoms(3)),
    # ... and without one: label-free proposals, labelled by the lesion mask
    "picai_proposals": lambda root: write_picai(root, picai_phantoms(3), reader_table=False),
    "prostatex": _write_prostatex,
    "prostate158": lambda root: write_prostate158(
        root, [Phantom("020", "020", lesions=[_lesion()]), Phantom("021", "021", seed=1)]
    ),
    "generic": lambda root: write_generic(
        root,
        [
            Phantom("g1", "s1", "hospA", lesions=[_lesion()], benign=[(tuple(CENTRE - 5.0), "TZ")]),
            Phantom("g2", "s2", "hospB", benign=[(tuple(CENTRE - 5.0), "TZ")], seed=2),
        ],
    ),
}


@dataclass(frozen=True)
class Case:
    name: str
    fmt: str  # a key of BASES
    what: str  # the input problem, in words (the first column of the table)
    damage: Callable[[Path], None]  # applied to a fresh copy of the base dataset
    patient: str  # the study the case is about
    reason: tuple[str, ...] = ()  # texts the rejection must contain; () = must be kept
    wrong: tuple[str, ...] = ()  # texts it must not contain (a misleading reason)
    options: dict = field(default_factory=dict)  # extra prepare() keywords
    replaces: str = ""  # base patient the damage renames away (not a lost good study)
    also_kept: bool = False  # the patient keeps another, good study (a duplicated row)
    verify: Callable[[Path], str | None] | None = None  # extra check of the case folder
    # a findings-table case: this finding (not its study) must be rejected; the study is kept
    finding: str = ""

    @property
    def expects_rejection(self) -> bool:
        return bool(self.reason)


@dataclass
class Outcome:
    case: Case
    reason: str = ""  # the rejection reason of the case's patient, if rejected
    flagged: bool = False
    right_reason: bool = False
    silently_kept: bool = False
    crashed: str = ""
    good_lost: list[str] = field(default_factory=list)
    problem: str = ""  # what ``verify`` found wrong

    @property
    def ok(self) -> bool:
        expected = self.right_reason if self.case.expects_rejection else not self.flagged
        return expected and not (
            self.silently_kept or self.crashed or self.good_lost or self.problem
        )

    def describe(self) -> str:
        c = self.case
        if self.crashed:
            return f"CRASHED: {self.crashed}"
        got = f"rejected: {self.reason}" if self.flagged else "kept"
        got += " (and kept)" if self.flagged and self.silently_kept else ""
        lost = f"; good studies lost: {self.good_lost}" if self.good_lost else ""
        want = f"rejected with {list(c.reason)}" if c.reason else "kept"
        return f"{c.name}: expected {want}, got {got}{lost}{'; ' + self.problem if self.problem else ''}"


def _unescape(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:2] in FORMULA_START else cell


def build_bases(work: Path) -> dict[str, tuple[Path, set[str]]]:
    """Write every base dataset and check it is clean; format -> (root, its patients)."""
    out = {}
    for fmt, write in BASES.items():
        root = write(work / fmt / "raw")
        report = prepare(root, work / fmt / "cache", console=Console(quiet=True), **PREPARE)
        patients = {r["patient_id"] for r in load_index(work / fmt / "cache")}
        assert report.rejected == 0 and report.kept == len(patients), report.reasons
        out[fmt] = (root, patients)
    return out


def run_case(case: Case, bases: dict[str, tuple[Path, set[str]]], work: Path) -> Outcome:
    base, patients = bases[case.fmt]
    folder = work / case.name
    shutil.rmtree(folder, ignore_errors=True)
    raw = folder / "raw"
    shutil.copytree(base, raw)
    outcome = Outcome(case)
    try:
        case.damage(raw)
        opts = PREPARE | case.options
        prepare(raw, folder / "cache", console=Console(quiet=True), **opts)
    except Exception as exc:  # noqa: BLE001 (a crash is an outcome here)
        outcome.crashed = f"{type(exc).__name__}: {exc}"
        return outcome
    rejected = load_rejected(folder / "cache")
    index = load_index(folder / "cache")
    kept = {r["patient_id"] for r in index}
    if case.finding:
        return _finding_outcome(outcome, rejected, index, patients, kept)
    mine = [r for r in rejected if _unescape(r["patient_id"]) == case.patient]
    outcome.crashed = next(
        (r["reason"] for r in rejected if r["reason"].startswith("unexpected ")), ""
    )
    outcome.flagged = bool(mine)
    if mine:
        outcome.reason = mine[0]["reason"]
        outcome.right_reason = all(t in outcome.reason for t in case.reason) and not any(
            t in outcome.reason for t in case.wrong
        )
    # kept although it should not be (a rejection record while its study still trains counts too)
    outcome.silently_kept = case.expects_rejection and case.patient in kept and not case.also_kept
    others = patients - {case.patient, case.replaces}
    outcome.good_lost = sorted(others - kept)
    if not case.expects_rejection and case.patient not in kept:
        outcome.good_lost.append(case.patient)
    if case.also_kept and case.patient not in kept:
        outcome.good_lost.append(case.patient)
    if case.verify is not None:
        outcome.problem = case.verify(folder) or ""
    return outcome


def _finding_outcome(outcome: Outcome, rejected, index, patients: set[str], kept: set[str]):
    """A findings-table case: the finding alone is refused, its study (if any) is kept."""
    case = outcome.case
    mine = [r for r in rejected if _unescape(r["patient_id"]) == case.patient
            and r.get("finding_id") == case.finding]  # fmt: skip
    outcome.crashed = next(
        (r["reason"] for r in rejected if r["reason"].startswith("unexpected ")), ""
    )
    outcome.flagged = bool(mine)
    if mine:
        outcome.reason = mine[0]["reason"]
        outcome.right_reason = all(t in outcome.reason for t in case.reason) and not any(
            t in outcome.reason for t in case.wrong
        )
    outcome.silently_kept = any(
        r["patient_id"] == case.patient and r["finding_id"] == case.finding for r in index
    )
    outcome.good_lost = sorted(patients - kept)  # the study of a bad finding stays too
    return outcome


def rejected_cell_escaped(patient: str) -> Callable[[Path], str | None]:
    """A verify: the rejected id is written to rejected.csv behind a leading apostrophe."""

    def check(folder: Path) -> str | None:
        with (folder / "cache" / "rejected.csv").open(newline="", encoding="utf-8") as fh:
            cells = [r["patient_id"] for r in csv.DictReader(fh)]
        return None if "'" + patient in cells else f"rejected.csv patient_id cells {cells}"

    return check


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    rejections = [o for o in outcomes if o.case.expects_rejection]
    return {
        "cases": len(outcomes),
        "expected rejected": len(rejections),
        "flagged": sum(o.flagged for o in rejections),
        "right reason": sum(o.right_reason for o in rejections),
        "silently kept": sum(o.silently_kept for o in rejections),
        "crashed": sum(bool(o.crashed) for o in outcomes),
        "expected kept": len(outcomes) - len(rejections),
        "good studies lost": sum(len(o.good_lost) for o in outcomes),
        "as expected": sum(o.ok for o in outcomes),
    }


def markdown_table(outcomes: list[Outcome]) -> str:
    lines = ["| case | format | input | expected | outcome |", "|---|---|---|---|---|"]
    for o in outcomes:
        c = o.case
        want = "rejected: " + " … ".join(c.reason) if c.reason else "kept"
        kept = o.silently_kept or not o.flagged
        got = "crashed" if o.crashed else ("kept" if kept else "rejected")
        got += "" if o.ok else " ✗"
        cells = (c.name, c.fmt, c.what, want, got)
        lines.append("| " + " | ".join(t.replace("|", "\\|") for t in cells) + " |")
    counts = summary(outcomes)
    lines += ["", "| " + " | ".join(counts) + " |", "|" + "---|" * len(counts)]
    lines.append("| " + " | ".join(str(v) for v in counts.values()) + " |")
    return "\n".join(lines)
