"""Prediction rows: the contract between training, export, report, study and benchmarks.

One row per scored finding (lesion mode) or slice (organ mode)::

    site, patient_id, study_id, finding_id, source, label, score, case_label, round

``source`` says where a finding came from (``reader``/``proposal``/``sampled``/``organ``…, as in
the crop cache's index), ``case_label`` is the patient's case-level label when known (patient-level
metrics use it), ``round`` the federated round whose model produced the score (empty for rules).
Rows are built from cache index rows by :func:`from_index` — the one way any model's or rule's
scores become rows — written by :func:`write` and read back, typed, by :func:`read`. Two models'
rows are matched by :func:`finding_key`, which is unique within a patient.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    "site", "patient_id", "study_id", "finding_id", "source", "label", "score", "case_label",
    "round",
)  # fmt: skip
REQUIRED = ("site", "patient_id", "finding_id", "label", "score")


class PredictionsError(ValueError):
    """Prediction rows that cannot be used (the message names the file/row or the patient)."""

    @classmethod
    def of(cls, patient_id: object, reason: str) -> PredictionsError:
        return cls(f"patient {patient_id}: {reason}")


def finding_key(row: dict) -> str:
    """``<study_id>:<finding_id>`` (organ slices: ``<study_id>:slice<k>``), unique per patient."""
    fid = row.get("finding_id")
    if fid is None or str(fid) == "":
        fid = f"slice{row.get('slice', -1)}"
    return f"{row.get('study_id', '')}:{fid}"


def _missing(value: Any) -> bool:
    if value is None or value == "":
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def from_index(
    index_rows: Sequence[dict], scores: Sequence[float], round: int | None = None
) -> list[dict]:
    """Prediction rows for crop-cache index rows and one score per row."""
    if len(index_rows) != len(scores):
        raise ValueError(f"{len(index_rows)} index rows but {len(scores)} scores")
    out = []
    for row, score in zip(index_rows, scores, strict=True):
        case = row.get("case_label")
        fid = row.get("finding_id")
        out.append(
            {
                "site": str(row["site"]),
                "patient_id": str(row["patient_id"]),
                "study_id": str(row.get("study_id", "")),
                "finding_id": str(fid) if fid not in (None, "") else f"slice{row.get('slice', -1)}",
                "source": str(row.get("source", "")),
                "label": int(row["label"]),
                "score": float(score),
                "case_label": None if _missing(case) else int(case),
                "round": round,
            }
        )
    return out


def write(path: str | Path, rows: Sequence[dict]) -> Path:
    """Write ``rows`` atomically (temp file + rename); missing optional columns stay empty."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in COLUMNS})
    os.replace(tmp, path)
    return path


def read(path: str | Path) -> list[dict]:
    """Typed rows of a predictions CSV: label/case_label/round int, score float."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: no such predictions file (the run did not finish?)")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise PredictionsError(f"{path}: missing columns {missing}")
        out = []
        for line, r in enumerate(reader, start=2):
            try:
                row = {
                    "site": r["site"],
                    "patient_id": r["patient_id"],
                    "study_id": r.get("study_id") or "",
                    "finding_id": r["finding_id"],
                    "source": r.get("source") or "",
                    "label": int(r["label"]),
                    "score": float(r["score"]),
                    "case_label": None if _missing(r.get("case_label")) else int(r["case_label"]),
                    "round": None if _missing(r.get("round")) else int(float(r["round"])),
                }
            except (TypeError, ValueError) as exc:
                raise PredictionsError(
                    f"{path}:{line}: patient {r.get('patient_id', '?')}: bad row ({exc})"
                ) from None
            out.append(row)
    return out
