"""PI-CAI's ranking metrics on our prediction rows, named for what they measure.

The PI-CAI challenge ranks by ``score = (AUROC + AP) / 2`` where AUROC is *case-level* (each case
scored by the maximum of its detection map) and AP is *lesion-level* (detections matched to the
reference lesions; a reference lesion no detection hits counts as a miss). This project scores
*given* findings (reader marks or proposals), not a free search of the volume, so the AP computed
from our rows is a **finding-level AP**: precision/recall over the findings that were scored. It
equals PI-CAI's lesion-level AP only when every reference lesion was offered as a finding; for
the real lesion-level number, write detection maps (``runs/detection_maps.py``) and run
``picai_eval`` on them (the ``[picai]`` extra).

Rows are the project's prediction rows (``site, patient_id, finding_id, label, score``, optional
``case_label``); a case is one ``site/patient_id``. CIs are patient bootstraps (paired: the same
resample gives the case AUROC, the finding-level AP and their mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from fedprostate.eval.bootstrap import (
    bootstrap_statistic,
    ci_dict,
    weighted_auroc,
    weighted_average_precision,
)

NAMES = {
    "case_auroc": "case-level AUROC (case score = max over its findings)",
    "finding_level_ap": "finding-level AP (over the scored findings; not PI-CAI's lesion-level AP)",
    "ranking_score": "PI-CAI ranking score = (case AUROC + finding-level AP) / 2",
}


def ranking_score(auroc: float | None, ap: float | None) -> float | None:
    """PI-CAI's ranking score ``(AUROC + AP) / 2``; None when either is undefined."""
    if auroc is None or ap is None or not np.isfinite(auroc) or not np.isfinite(ap):
        return None
    return (float(auroc) + float(ap)) / 2.0


def _cases(rows: Sequence[dict]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(case keys, case labels, case scores, index of each case's first row)."""
    keys: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        keys.setdefault(f"{row['site']}/{row['patient_id']}", []).append(i)
    labels, scores, first = [], [], []
    for idx in keys.values():
        cases = [rows[i].get("case_label") for i in idx]
        if all(c not in (None, "") for c in cases):
            labels.append(max(int(c) for c in cases))
        else:
            labels.append(max(int(rows[i]["label"]) for i in idx))
        scores.append(max(float(rows[i]["score"]) for i in idx))
        first.append(idx[0])
    return list(keys), np.array(labels), np.array(scores), np.array(first)


def picai_metrics(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0, level=0.95) -> dict:
    """Case AUROC, finding-level AP and the PI-CAI ranking score, each {estimate, low, high}."""
    if not rows:
        raise ValueError("no prediction rows to score")
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    pids = [f"{r['site']}/{r['patient_id']}" for r in rows]
    _, case_y, case_s, first = _cases(rows)
    both_cases = 0 < case_y.sum() < len(case_y)
    both_findings = 0 < y.sum() < len(y)
    auroc = float(roc_auc_score(case_y, case_s)) if both_cases else None
    ap = float(average_precision_score(y, s)) if both_findings else None
    out = {
        "n_cases": len(case_y),
        "n_positive_cases": int(case_y.sum()),
        "n_findings": len(y),
        "n_positive_findings": int(y.sum()),
        "names": dict(NAMES),
    }
    if n_boot <= 0 or not (both_cases and both_findings):
        empty: list[float] = []
        out["case_auroc"] = ci_dict(auroc, empty, level)
        out["finding_level_ap"] = ci_dict(ap, empty, level)
        out["ranking_score"] = ci_dict(ranking_score(auroc, ap), empty, level)
        return out

    def kernel(w: np.ndarray) -> np.ndarray:
        case_w = w[:, first]  # every finding of a case carries the case's draw count
        a = weighted_auroc(case_y, case_s, case_w)
        p = weighted_average_precision(y, s, w)
        return np.column_stack([a, p, (a + p) / 2.0])

    samples = bootstrap_statistic(pids, kernel, n_boot=n_boot, seed=seed)
    out["case_auroc"] = ci_dict(auroc, samples[:, 0], level)
    out["finding_level_ap"] = ci_dict(ap, samples[:, 1], level)
    out["ranking_score"] = ci_dict(ranking_score(auroc, ap), samples[:, 2], level)
    return out
