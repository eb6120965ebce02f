"""Metrics, patient bootstrap CIs, thresholds, calibration, aggregation and baselines."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from fedprostate.eval.baselines import (
    adc_rule_predictions,
    median_psad,
    psad_predictions,
)
from fedprostate.eval.bootstrap import (
    bootstrap_ci,
    seed_ci,
    weighted_auroc,
    weighted_average_precision,
)
from fedprostate.eval.metrics import (
    aggregate_patients,
    balanced_accuracy,
    brier_score,
    choose_threshold,
    evaluate_predictions,
    expected_calibration_error,
    sens_spec,
)
from fedprostate.records import predictions
from fedprostate.records.predictions import PredictionsError


def _rows(labels, scores, patients=None, sites=None, sources=None):
    n = len(labels)
    patients = patients if patients is not None else range(n)
    sites = sites if sites is not None else ["A"] * n
    sources = sources if sources is not None else ["reader"] * n
    return [
        {
            "site": st,
            "patient_id": str(p),
            "finding_id": f"f{i}",
            "source": src,
            "label": int(y),
            "score": float(s),
        }
        for i, (y, s, p, st, src) in enumerate(
            zip(labels, scores, patients, sites, sources, strict=True)
        )
    ]


def test_weighted_kernels_match_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(1)
    for _ in range(25):
        n = int(rng.integers(6, 200))
        y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
        s = np.round(rng.normal(size=n) + y, 1)  # rounding makes ties
        w = np.r_[1, 1, rng.integers(0, 4, n - 2)].astype(float)
        assert weighted_auroc(y, s, np.ones(n))[0] == pytest.approx(roc_auc_score(y, s))
        assert weighted_auroc(y, s, w)[0] == pytest.approx(roc_auc_score(y, s, sample_weight=w))
        ap = weighted_average_precision(y, s, w)[0]
        assert ap == pytest.approx(average_precision_score(y, s, sample_weight=w))


def test_bootstrap_of_500_findings_is_valid_and_reproducible():
    """No timed assertion (speed lives in benchmarks/): every resample valid, seeded."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    s = rng.normal(size=500) + y
    patients = rng.integers(0, 200, 500)
    ci = bootstrap_ci(y, s, patients, "auroc", n_boot=1000, seed=0)
    assert ci == bootstrap_ci(y, s, patients, "auroc", n_boot=1000, seed=0)
    assert ci["low"] < ci["estimate"] < ci["high"] and ci["n_valid"] == 1000


def test_bootstrap_ci_coverage_binormal():
    """Percentile patient-bootstrap CI covers the true binormal AUROC about 95 % of the time."""
    rng = np.random.default_rng(3)
    d = 1.2
    true_auc = stats.norm.cdf(d / math.sqrt(2))
    n = 100
    covered = 0
    for _ in range(200):
        y = np.r_[np.ones(n), np.zeros(n)]
        s = np.r_[rng.normal(d, 1, n), rng.normal(0, 1, n)]
        ci = bootstrap_ci(
            y, s, np.arange(2 * n), "auroc", n_boot=400, seed=int(rng.integers(1 << 30))
        )
        covered += ci["low"] <= true_auc <= ci["high"]
    assert 0.90 <= covered / 200 <= 0.99


def test_bootstrap_resamples_patients_not_findings():
    """Five identical findings per patient: the patient bootstrap must be ~sqrt(5) wider."""
    rng = np.random.default_rng(4)
    n_pat = 80
    y_pat = rng.integers(0, 2, n_pat)
    s_pat = rng.normal(size=n_pat) + y_pat
    y, s = np.repeat(y_pat, 5), np.repeat(s_pat, 5)
    by_patient = bootstrap_ci(y, s, np.repeat(np.arange(n_pat), 5), n_boot=1000, seed=0)
    by_finding = bootstrap_ci(y, s, np.arange(len(y)), n_boot=1000, seed=0)
    assert by_patient["estimate"] == by_finding["estimate"]
    width = by_patient["high"] - by_patient["low"]
    assert width > 1.6 * (by_finding["high"] - by_finding["low"])


def test_seed_ci_student_t():
    res = seed_ci([0.80, 0.82, 0.84])
    half = stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)
    assert res["mean"] == pytest.approx(0.82)
    assert res["low"] == pytest.approx(0.82 - half) and res["high"] == pytest.approx(0.82 + half)
    assert seed_ci([0.7])["low"] is None and seed_ci([])["n"] == 0


def test_ece_small_when_calibrated_large_when_not():
    rng = np.random.default_rng(5)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.02
    too_high = 0.5 + 0.5 * p  # overestimates by (1 - p) / 2: expected ECE = E[(1 - p) / 2] = 0.25
    assert expected_calibration_error(y, too_high) == pytest.approx(0.25, abs=0.02)
    assert brier_score(y, p) < brier_score(y, too_high)
    with pytest.raises(ValueError):
        expected_calibration_error([0, 1], [0.2, 1.5])


def test_threshold_rules():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.75, 0.05, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.85, 0.9, 0.95])
    # Youden: threshold 0.4 gives sens 9/10, spec 3/4 -> J = 0.65, the best achievable.
    assert choose_threshold(y, s, "youden") == pytest.approx(0.4)
    # sens90: 9 of 10 positives must be >= t; the largest such t is the 9th highest positive.
    t90 = choose_threshold(y, s, "sens90")
    assert t90 == pytest.approx(0.4)
    assert sens_spec(y, s, t90) == pytest.approx((0.9, 0.75))
    assert balanced_accuracy(y, s, t90) == pytest.approx(0.825)
    assert sens_spec(y, s, np.nextafter(t90, 1))[0] < 0.9
    with pytest.raises(ValueError):
        choose_threshold(y, s, "f1")


def test_patient_aggregation_takes_max_and_case_label():
    rows = _rows([0, 1, 0, 0], [0.2, 0.7, 0.9, 0.1], patients=["p1", "p1", "p2", "p2"])
    agg = {r["patient_id"]: r for r in aggregate_patients(rows)}
    assert agg["p1"]["score"] == 0.7 and agg["p1"]["label"] == 1
    assert agg["p2"]["score"] == 0.9 and agg["p2"]["label"] == 0
    for r in rows:
        r["case_label"] = 1 if r["patient_id"] == "p2" else 0
    agg = {r["patient_id"]: r for r in aggregate_patients(rows)}
    assert agg["p2"]["label"] == 1 and agg["p1"]["label"] == 0


def test_sampled_tissue_never_enters_the_headline_and_is_reported_apart():
    # Positives 0.6..0.9; the reader's benign marks overlap them, sampled tissue is all below.
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    scores = [0.6, 0.7, 0.8, 0.9, 0.65, 0.85, 0.5, 0.1, 0.2, 0.3]
    sources = ["reader"] * 4 + ["reader"] * 3 + ["sampled"] * 3
    res = evaluate_predictions(_rows(labels, scores, sources=sources), n_boot=200)
    clinical = roc_auc_score([1] * 4 + [0] * 3, scores[:7])
    assert res["lesion"]["auroc"]["estimate"] == pytest.approx(clinical)  # sampled left out
    assert res["n_findings"] == 7 and res["n_neg"] == 3
    neg = res["negatives"]
    assert neg["sampled normal tissue"]["auroc"]["estimate"] == pytest.approx(1.0)
    assert neg["marked/proposed negatives"]["auroc"]["estimate"] == pytest.approx(clinical)
    assert (
        neg["marked/proposed negatives"]["n_neg"] == 3
        and neg["sampled normal tissue"]["n_neg"] == 3
    )


def test_patients_without_findings_count_as_negative_by_reading():
    # two patients with findings, two the radiologist marked nothing on (one is a missed cancer)
    rows = _rows([1, 0], [0.9, 0.2], patients=["a", "b"])
    patients = [{"site": "A", "patient_id": pid, "case_label": c}
                for pid, c in (("a", 1), ("b", 0), ("c", 0), ("d", 1))]  # fmt: skip
    res = evaluate_predictions(rows, n_boot=100, patients=patients)
    assert res["patient"]["n"] == 4 and res["patient"]["n_pos"] == 2
    # a (0.9, pos), b (0.2, neg), c and d below every finding (c neg, d a missed positive)
    assert res["patient"]["auroc"]["estimate"] == pytest.approx(roc_auc_score(
        [1, 0, 0, 1], [0.9, 0.2, -0.8, -0.8]))  # fmt: skip
    without = evaluate_predictions(rows, n_boot=100)
    assert without["patient"]["n"] == 2


def test_per_site_metrics_and_worst_site():
    rng = np.random.default_rng(6)
    rows = []
    for site, signal in (("good", 3.0), ("bad", 0.2), ("mid", 1.0)):
        y = rng.integers(0, 2, 120)
        rows += _rows(
            y,
            rng.normal(size=120) + signal * y,
            patients=[f"{site}{i}" for i in range(120)],
            sites=[site] * 120,
        )
    res = evaluate_predictions(rows, n_boot=300)
    assert set(res["per_site"]) == {"good", "bad", "mid"}
    assert res["worst_site"]["site"] == "bad"
    for site_res in res["per_site"].values():
        ci = site_res["auroc"]
        assert ci["low"] <= ci["estimate"] <= ci["high"]


def test_evaluate_predictions_thresholds_and_calibration():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 300)
    p = 1 / (1 + np.exp(-(rng.normal(size=300) + 2 * y - 1)))
    rows = _rows(y, p, patients=np.arange(300) // 3)
    val = _rows(y[:100], p[:100] * 0.5)
    res = evaluate_predictions(rows, n_boot=200, val_rows=val)
    op = res["lesion"]["operating_point"]
    assert op["source"] == "validation youden"
    assert op["threshold"] == pytest.approx(choose_threshold(y[:100], p[:100] * 0.5, "youden"))
    assert op["sensitivity"]["estimate"] == pytest.approx(sens_spec(y, p, op["threshold"])[0])
    assert res["lesion"]["at_sens90"]["source"] == "validation"
    assert res["lesion"]["calibration"]["brier"]["estimate"] == pytest.approx(brier_score(y, p))
    assert res["lesion"]["auroc"]["estimate"] == pytest.approx(roc_auc_score(y, p))
    assert res["n_patients"] == 100 and res["patient"]["n"] == 100
    fixed = evaluate_predictions(rows, threshold=0.3, n_boot=50)
    assert fixed["lesion"]["operating_point"]["threshold"] == 0.3
    raw = evaluate_predictions(_rows(y, 10 * p - 3), n_boot=50)  # not probabilities
    assert raw["lesion"]["calibration"] is None
    assert "optimistic" in raw["lesion"]["operating_point"]["source"]


def test_evaluate_predictions_rejects_bad_rows():
    rows = _rows([0, 1], [0.1, 0.9])
    rows[1]["score"] = float("nan")
    with pytest.raises(PredictionsError, match="patient 1"):
        evaluate_predictions(rows)
    with pytest.raises(PredictionsError, match="label"):
        evaluate_predictions(_rows([0, 2], [0.1, 0.9]))
    with pytest.raises(ValueError):
        evaluate_predictions([])


def _index_row(pid, fid, label, adc, psad, split="test", case=None, site="S1"):
    return {
        "row": 0, "site": site, "patient_id": pid, "study_id": "s" + pid, "finding_id": fid,
        "split": split, "label": label, "isup": 2 * label, "zone": "PZ", "source": "reader",
        "slice": -1, "adc_mean": adc, "psad": psad, "case_label": label if case is None else case,
    }  # fmt: skip


def test_adc_and_psad_baselines():
    index = [
        _index_row("1", "a", 1, 700.0, 0.3),
        _index_row("1", "b", 0, 1500.0, 0.3, case=1),
        _index_row("2", "a", 0, 1400.0, 0.1),
        _index_row("3", "a", 0, 1600.0, None),
        _index_row("4", "a", 1, 900.0, 0.05, split="train"),
    ]
    adc = adc_rule_predictions(index)
    assert [r["score"] for r in adc] == [-700.0, -1500.0, -1400.0, -1600.0]
    assert evaluate_predictions(adc, n_boot=50)["lesion"]["auroc"]["estimate"] == 1.0
    psad = psad_predictions(index)
    assert [(r["patient_id"], r["score"], r["label"]) for r in psad] == [
        ("1", 0.3, 1),
        ("2", 0.1, 0),
    ]
    imputed = psad_predictions(index, impute=median_psad(index, split="test"))
    assert {r["patient_id"]: r["score"] for r in imputed}["3"] == pytest.approx(0.2)
    index[2]["adc_mean"] = None
    with pytest.raises(PredictionsError, match="patient 2"):
        adc_rule_predictions(index)
    assert predictions.from_index(index[:1], [0.5])[0]["finding_id"] == "a"
