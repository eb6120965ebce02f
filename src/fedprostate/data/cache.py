"""The crop cache: ``meta.json``, ``index.csv``, ``sites/<site>.safetensors``, ``rejected.csv``.

``index.csv`` has one row per crop; ``row`` is its position in its site's ``crops`` tensor
(float16 [N, C, H, W]). Site files and the index are written to temporary names and renamed at
the end, so an interrupted run never leaves a half-written cache next to a good one.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from fedprostate.data.study import printable
from fedprostate.records.csv_cells import safe_cell

INDEX_COLUMNS = (
    "row",
    "site",
    "patient_id",
    "study_id",
    "finding_id",
    "split",
    "label",
    "isup",
    "zone",
    "source",
    "slice",
    "adc_mean",
    "psad",
    "case_label",
    "pirads",
)
# every kept study, with or without findings: a patient the radiologist marked nothing on is a
# patient (negative by reading) that patient-level metrics must count
PATIENT_COLUMNS = ("site", "patient_id", "study_id", "split", "case_label", "psad", "n_findings")
REJECTED_COLUMNS = ("path", "patient_id", "study_id", "finding_id", "reason")
_INT = ("row", "label", "isup", "slice", "case_label", "n_findings")
_OPTIONAL_INT = ("pirads",)
_FLOAT = ("adc_mean", "psad")
VERSION = 2


def site_file(cache_dir: str | Path, site: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", site)
    return Path(cache_dir) / "sites" / f"{safe}.safetensors"


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_cache(
    cache_dir: str | Path,
    meta: dict,
    rows: list[dict],
    crops: dict[str, np.ndarray],
    patients: list[dict] | None = None,
) -> None:
    """Write site tensors, index, patients and meta (each atomically). ``crops``: site ->
    [N,C,H,W]; ``patients`` default: one row per study of ``rows``."""
    cache_dir = Path(cache_dir)
    for site, array in crops.items():
        data = {"crops": np.ascontiguousarray(array, dtype=np.float16)}
        _atomic(site_file(cache_dir, site), lambda p, d=data: save_file(d, str(p)))

    def write_index(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=INDEX_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: safe_cell(_fmt(r.get(k))) for k in INDEX_COLUMNS})

    _atomic(cache_dir / "index.csv", write_index)
    if patients is None:
        patients = patients_of(rows)

    def write_patients(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=PATIENT_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for r in patients:
                writer.writerow({k: safe_cell(_fmt(r.get(k))) for k in PATIENT_COLUMNS})

    _atomic(cache_dir / "patients.csv", write_patients)
    full = {**meta, "version": VERSION}
    _atomic(
        cache_dir / "meta.json",
        lambda p: p.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n", encoding="utf-8"),
    )


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def patients_of(rows: list[dict]) -> list[dict]:
    """One patient row per study of index rows (for caches written without a patients list)."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["site"], r["patient_id"], r["study_id"])
        entry = out.setdefault(key, {k: r.get(k) for k in PATIENT_COLUMNS} | {"n_findings": 0})
        entry["n_findings"] += r.get("source") in ("reader", "proposal")
    return list(out.values())


class RejectedLog:
    """``rejected.csv``, started fresh per run and appended (flushed) as studies are rejected.
    Cells are escaped against formula injection (``records.csv_cells``): a rejected id may be
    ``=cmd|' /C calc'!A0``."""

    def __init__(self, cache_dir: str | Path):
        self.path = Path(cache_dir) / "rejected.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow(REJECTED_COLUMNS)

    def add(
        self, path: str, patient_id: str, study_id: str, reason: str, finding_id: str = ""
    ) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            cells = (path, patient_id, study_id, finding_id, reason)
            csv.writer(fh).writerow([safe_cell(printable(v)) for v in cells])


def load_meta(cache_dir: str | Path) -> dict:
    return json.loads((Path(cache_dir) / "meta.json").read_text(encoding="utf-8"))


def load_index(cache_dir: str | Path) -> list[dict]:
    """Index rows with typed values (int / float; empty psad or adc_mean -> None)."""
    with open(Path(cache_dir) / "index.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [_typed(r) for r in rows]


def _typed(r: dict) -> dict:
    for k in _INT:
        if k in r:
            r[k] = int(r[k])
    for k in _OPTIONAL_INT:
        if k in r:
            r[k] = int(r[k]) if r[k] not in ("", None) else None
    for k in _FLOAT:
        if k in r:
            r[k] = float(r[k]) if r[k] not in ("", None) else None
    return r


def load_patients(cache_dir: str | Path) -> list[dict]:
    """Every kept study (``patients.csv``; derived from the index for older caches)."""
    path = Path(cache_dir) / "patients.csv"
    if not path.exists():
        return patients_of(load_index(cache_dir))
    with open(path, newline="", encoding="utf-8") as fh:
        return [_typed(r) for r in csv.DictReader(fh)]


def load_rejected(cache_dir: str | Path) -> list[dict]:
    path = Path(cache_dir) / "rejected.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def load_site_crops(cache_dir: str | Path, site: str) -> np.ndarray:
    return load_file(str(site_file(cache_dir, site)))["crops"]


def select(rows: list[dict], sites=None, split=None) -> list[dict]:
    """Rows of the given site(s) and split(s); ``None`` keeps all. Strings or collections."""
    sites = {sites} if isinstance(sites, str) else (set(sites) if sites is not None else None)
    split = {split} if isinstance(split, str) else (set(split) if split is not None else None)
    return [
        r
        for r in rows
        if (sites is None or r["site"] in sites) and (split is None or r["split"] in split)
    ]


class CropDataset(torch.utils.data.Dataset):
    """Items ``(x float32 [C,H,W], y int64)`` for index ``rows``; site tensors load once."""

    def __init__(self, cache_dir: str | Path, rows: list[dict]):
        self.cache_dir = Path(cache_dir)
        self.rows = list(rows)
        self._sites: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _site(self, site: str) -> torch.Tensor:
        if site not in self._sites:
            self._sites[site] = torch.from_numpy(load_site_crops(self.cache_dir, site))
        return self._sites[site]

    def __getitem__(self, i: int):
        r = self.rows[i]
        x = self._site(r["site"])[int(r["row"])].float()
        return x, torch.tensor(int(r["label"]), dtype=torch.int64)

    @property
    def labels(self) -> np.ndarray:
        return np.array([int(r["label"]) for r in self.rows], dtype=np.int64)


def summarize_cache(cache_dir: str | Path, console=None) -> list[dict]:
    """Print (rich) and return per-site/split patients, crops, positives and case prevalence."""
    from rich.console import Console
    from rich.table import Table

    rows = load_index(cache_dir)
    meta = load_meta(cache_dir)
    stats: dict[tuple[str, str], dict] = {}
    for r in rows:
        s = stats.setdefault((r["site"], r["split"]), {"patients": {}, "crops": 0, "positive": 0})
        s["crops"] += 1
        s["positive"] += r["label"]
        s["patients"][r["patient_id"]] = max(s["patients"].get(r["patient_id"], 0), r["case_label"])
    table = Table(
        title=f"{cache_dir} — {meta.get('mode')} mode, {meta.get('crop')} px "
        f"at {meta.get('spacing')} mm"
    )
    for col in ("site", "split", "patients", "crops", "positive crops", "case prevalence"):
        table.add_column(col, justify="left" if col in ("site", "split") else "right")
    out = []
    order = {s: i for i, s in enumerate(("train", "val", "test"))}
    for (site, split), s in sorted(
        stats.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))
    ):
        n_pat = len(s["patients"])
        prev = sum(s["patients"].values()) / n_pat if n_pat else 0.0
        out.append(
            {
                "site": site,
                "split": split,
                "patients": n_pat,
                "crops": s["crops"],
                "positive": s["positive"],
                "prevalence": prev,
            }
        )
        table.add_row(site, split, str(n_pat), str(s["crops"]), str(s["positive"]), f"{prev:.0%}")
    n_rej = len(load_rejected(cache_dir))
    console = console or Console()
    console.print(table)
    console.print(
        f"{len(rows)} crops, {len({(r['site'], r['patient_id']) for r in rows})} patients, "
        f"{n_rej} rejected studies (rejected.csv)"
    )
    return out
