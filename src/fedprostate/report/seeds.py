"""``report.html`` + ``report.md`` for a seed sweep (``OUT/seeds.json`` from ``--seeds``)."""

from __future__ import annotations

import json
from pathlib import Path

from fedprostate.report.document import Doc

LABELS = {
    "val_auroc": "validation AUROC (best round)",
    "test_auroc": "test AUROC (finding level)",
    "test_ap": "test AP (finding level)",
    "last_round_test_auroc": "test AUROC, last round",
    "case_auroc": "case AUROC (max over findings)",
    "finding_level_ap": "finding-level AP",
    "ranking_score": "PI-CAI ranking score (case AUROC + finding-level AP) / 2",
}


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def seeds_doc(result: dict, title: str) -> Doc:
    doc = Doc(title)
    seeds = result["seeds"]
    doc.para(
        f"{result.get('kind') or 'run'} repeated with {len(seeds)} training seeds "
        f"({', '.join(map(str, seeds))}); each seed's run folder has its own report. "
        f"Interval: {result['interval']}."
    )
    rows = []
    for name, ci in result["metrics"].items():
        if ci["mean"] is None:
            continue
        interval = f"{_num(ci['low'])}–{_num(ci['high'])}" if ci["low"] is not None else "n/a"
        rows.append([LABELS.get(name, name), _num(ci["mean"]), _num(ci["sd"]), interval, ci["n"]])
    doc.table(["metric", "mean", "sd", "95% CI over seeds", "seeds"], rows, "Spread over seeds")
    names = [n for n, ci in result["metrics"].items() if ci["mean"] is not None]
    per_seed = [
        [seed, *(_num(values.get(n)) for n in names)] for seed, values in result["per_seed"].items()
    ]
    doc.table(["seed", *names], per_seed, "Each seed's run")
    return doc


def write_seeds_report(folder: str | Path) -> Path:
    """Write FOLDER/report.html and FOLDER/report.md from FOLDER/seeds.json; the HTML path."""
    folder = Path(folder)
    result = json.loads((folder / "seeds.json").read_text(encoding="utf-8"))
    _, page = seeds_doc(result, f"fedprostate seed sweep: {folder.resolve().name}").write(folder)
    return page
