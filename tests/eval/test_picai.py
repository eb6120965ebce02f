"""PI-CAI ranking metrics: case AUROC, finding-level AP and (AUROC + AP) / 2 with paired CIs."""

from __future__ import annotations

import numpy as np
import pytest

from fedprostate.eval.picai import picai_metrics, ranking_score


def _rows(seed: int = 0, n_patients: int = 30) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        positive = p % 3 == 0
        for f in range(3):
            label = int(positive and f == 0)
            rows.append(
                {
                    "site": "s1" if p % 2 else "s2",
                    "patient_id": str(p),
                    "study_id": "1",
                    "finding_id": f"F{f}",
                    "label": label,
                    "score": float(np.clip(0.3 + 0.4 * label + rng.normal(0, 0.2), 0.01, 1)),
                }
            )
    return rows


def test_ranking_score_is_the_mean_of_auroc_and_ap():
    assert ranking_score(0.8, 0.4) == pytest.approx(0.6)
    assert ranking_score(None, 0.4) is None
    assert ranking_score(float("nan"), 0.4) is None


def test_picai_metrics_are_case_auroc_and_finding_level_ap():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rows = _rows()
    m = picai_metrics(rows, n_boot=200)
    cases: dict[str, list[dict]] = {}
    for r in rows:
        cases.setdefault(r["patient_id"], []).append(r)
    case_y = [max(r["label"] for r in g) for g in cases.values()]
    case_s = [max(r["score"] for r in g) for g in cases.values()]
    assert m["case_auroc"]["estimate"] == pytest.approx(roc_auc_score(case_y, case_s))
    ap = average_precision_score([r["label"] for r in rows], [r["score"] for r in rows])
    assert m["finding_level_ap"]["estimate"] == pytest.approx(ap)
    score = m["ranking_score"]
    assert score["estimate"] == pytest.approx((m["case_auroc"]["estimate"] + ap) / 2)
    assert score["low"] < score["estimate"] < score["high"]
    assert "not PI-CAI's lesion-level AP" in m["names"]["finding_level_ap"]
    assert (m["n_cases"], m["n_findings"], m["n_positive_cases"]) == (30, 90, 10)


def test_case_label_overrides_finding_labels():
    rows = _rows()
    for r in rows:  # a positive case whose lesion was not offered as a finding
        r["case_label"] = 1 if r["patient_id"] in ("0", "1") else int(r["patient_id"]) % 3 == 0
    assert picai_metrics(rows, n_boot=0)["n_positive_cases"] == 11


def test_one_class_gives_undefined_metrics_not_nan():
    rows = [dict(r, label=0) for r in _rows()]
    m = picai_metrics(rows, n_boot=50)
    assert m["ranking_score"]["estimate"] is None and m["finding_level_ap"]["estimate"] is None


def test_the_same_numbers_as_picai_eval():
    """picai_eval's Metrics from the same cases and findings gives the same AUROC, AP and score
    (when every lesion was offered as a finding, finding-level AP = PI-CAI's lesion-level AP)."""
    pytest.importorskip("picai_eval")
    from picai_eval.metrics import Metrics

    rows = _rows(seed=4)
    lesion_results: dict[str, list] = {}
    for r in rows:
        lesion_results.setdefault(r["patient_id"], []).append((r["label"], r["score"], 0.5))
    theirs = Metrics(lesion_results=lesion_results)
    ours = picai_metrics(rows, n_boot=0)
    assert ours["case_auroc"]["estimate"] == pytest.approx(theirs.auroc)
    assert ours["finding_level_ap"]["estimate"] == pytest.approx(theirs.AP)
    assert ours["ranking_score"]["estimate"] == pytest.approx(theirs.score)


def test_score_ci_pairs_auroc_and_ap_on_the_same_patient_resample():
    from fedprostate.eval.bootstrap import (
        bootstrap_statistic,
        percentile_ci,
        weighted_auroc,
        weighted_average_precision,
    )

    rows = _rows(seed=2)
    y = np.array([r["label"] for r in rows])
    s = np.array([r["score"] for r in rows])
    first = np.arange(0, len(rows), 3)  # three findings per patient, in patient order

    def kernel(w):
        cy = y.reshape(-1, 3).max(1)
        cs = s.reshape(-1, 3).max(1)
        return (weighted_auroc(cy, cs, w[:, first]) + weighted_average_precision(y, s, w)) / 2

    pids = [f"{r['site']}/{r['patient_id']}" for r in rows]
    low, high = percentile_ci(bootstrap_statistic(pids, kernel, n_boot=300, seed=7))
    m = picai_metrics(rows, n_boot=300, seed=7)["ranking_score"]
    assert (m["low"], m["high"]) == pytest.approx((low, high))
