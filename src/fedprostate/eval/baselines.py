"""Baselines that need no deep learning, in the prediction-row format of ``metrics``.

- Mean ADC in the finding (radiology rule: restricted diffusion = low ADC = suspicious):
  score = -adc_mean, one row per crop (lesion level).
- PSA density (patient level): score = psad, one row per patient.

Both read the crop-cache index rows (``fedprostate.data.cache.load_index``), so they are scored
on exactly the findings/patients the deep models are scored on.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from fedprostate.records import predictions
from fedprostate.records.predictions import PredictionsError


def _missing(value) -> bool:
    if value is None or value == "":
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def _select(index_rows: Sequence[dict], split: str | None) -> list[dict]:
    rows = [r for r in index_rows if split is None or r["split"] == split]
    if not rows:
        raise ValueError(f"no cache index rows in split {split!r}")
    return rows


def adc_rule_predictions(index_rows: Sequence[dict], split: str | None = "test") -> list[dict]:
    """Lesion-level rows scored by -adc_mean (ADC in 1e-6 mm^2/s; lower ADC = higher risk)."""
    rows = _select(index_rows, split)
    for r in rows:
        if _missing(r.get("adc_mean")):
            raise PredictionsError.of(
                str(r["patient_id"]), f"no adc_mean for finding {predictions.finding_key(r)}"
            )
    return predictions.from_index(rows, [-float(r["adc_mean"]) for r in rows])


def median_psad(index_rows: Sequence[dict], split: str | None = "train") -> float:
    """Median PSA density over patients of ``split`` that have one (an imputation value)."""
    values = {}
    for r in _select(index_rows, split):
        if not _missing(r.get("psad")):
            values[(r["site"], r["patient_id"])] = float(r["psad"])
    if not values:
        raise ValueError(f"no patient with a PSA density in split {split!r}")
    return float(np.median(list(values.values())))


def psad_predictions(
    index_rows: Sequence[dict], split: str | None = "test", impute: float | None = None
) -> list[dict]:
    """Patient-level rows scored by PSA density (finding_id "patient", source "patient").

    Label: the patient's case_label when known, else the max of its crop labels. A patient with
    several studies of different PSAD is scored by the highest (as patient scores are maxima).
    Patients with no PSA density are skipped, or scored ``impute`` when given (e.g.
    ``median_psad(rows)``).
    """
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in _select(index_rows, split):
        groups[(str(r["site"]), str(r["patient_id"]))].append(r)
    out = []
    for (site, pid), group in sorted(groups.items()):
        known = [float(r["psad"]) for r in group if not _missing(r.get("psad"))]
        if not known and impute is None:
            continue
        cases = [r.get("case_label") for r in group]
        has_case = all(not _missing(c) for c in cases)
        label = max(int(c) for c in cases) if has_case else max(int(r["label"]) for r in group)
        out.append(
            {
                "site": site,
                "patient_id": pid,
                "study_id": "",
                "finding_id": "patient",
                "source": "patient",
                "label": label,
                "score": max(known) if known else float(impute),
                "case_label": label,
            }
        )
    if not out:
        raise ValueError(f"no patient in split {split!r} has a PSA density")
    return out
