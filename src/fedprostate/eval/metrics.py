"""Lesion- and patient-level metrics with patient-bootstrap CIs: the clinical question.

Prediction rows (the one format every model and baseline produces, ``records.predictions``) are
dicts with keys ``site, patient_id, finding_id, source, label, score`` (optional
``case_label``: the patient's case-level label, used for the patient-level label when present).
``score`` is any monotone risk score; Brier and ECE are only reported when every score lies in
[0, 1] (probabilities).

Headline metrics are computed over the findings a reader marked or the label-free rule proposed
(``config.HEADLINE_SOURCES``; organ slices in organ mode): *is this marked finding csPCa or a
benign mimic?* Sampled normal tissue (``config.APART_SOURCES``) never enters them; its AUROC
against the headline positives is reported apart. Patient level: a patient's score is the
maximum over its findings, and a patient with no finding (nothing marked) is scored below every
finding — negative by reading — when the patient list is given.

Operating points: a finding is called positive when ``score >= threshold``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from fedprostate.config import APART_SOURCES, THRESHOLD_RULES
from fedprostate.eval.bootstrap import (
    bootstrap_statistic,
    ci_dict,
    weighted_auroc,
    weighted_average_precision,
    weighted_ece,
    weighted_mean,
    weighted_sens_spec,
)
from fedprostate.records.predictions import PredictionsError

ROW_KEYS = ("site", "patient_id", "finding_id", "source", "label", "score")


def _arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-D of equal length")
    return y, s


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < y.sum() < y.size


def auroc(labels, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, s = _arrays(labels, scores)
    return float(roc_auc_score(y, s)) if _both_classes(y) else math.nan


def average_precision(labels, scores) -> float:
    y, s = _arrays(labels, scores)
    return float(average_precision_score(y, s)) if y.sum() > 0 else math.nan


def sens_spec(labels, scores, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity when ``score >= threshold`` is called positive."""
    y, s = _arrays(labels, scores)
    sens, spec = weighted_sens_spec(y, s >= threshold, np.ones(len(y)))
    return float(sens[0]), float(spec[0])


def balanced_accuracy(labels, scores, threshold: float) -> float:
    sens, spec = sens_spec(labels, scores, threshold)
    return (sens + spec) / 2


def brier_score(labels, probs) -> float:
    y, p = _arrays(labels, probs)
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(labels, probs, n_bins: int = 10) -> float:
    """ECE over ``n_bins`` equal-width bins on [0, 1]: sum_b (n_b / N) |mean(y)_b - mean(p)_b|."""
    y, p = _arrays(labels, probs)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("ECE needs probabilities in [0, 1]")
    return float(weighted_ece(y, p, np.ones(len(p)), n_bins)[0])


def threshold_at_sensitivity(labels, scores, target: float = 0.9) -> float:
    """Largest threshold whose sensitivity is >= target (i.e. the most specific such one)."""
    y, s = _arrays(labels, scores)
    pos = np.sort(s[y == 1])[::-1]
    if pos.size == 0:
        raise ValueError("no positive finding: cannot choose a sensitivity threshold")
    k = math.ceil(target * pos.size - 1e-9)  # need at least k positives at or above it
    return float(pos[max(k, 1) - 1])


def choose_threshold(val_labels, val_scores, rule: str = "youden") -> float:
    """Operating threshold chosen on validation scores.

    youden: maximises sensitivity + specificity - 1 over the observed scores (the highest such
    threshold on ties); sens90: the largest threshold with sensitivity >= 90 %.
    """
    y, s = _arrays(val_labels, val_scores)
    if not _both_classes(y):
        raise ValueError("threshold choice needs validation findings of both classes")
    if rule == "sens90":
        return threshold_at_sensitivity(y, s, 0.9)
    if rule != "youden":
        raise ValueError(f"unknown threshold rule {rule!r}; expected one of {THRESHOLD_RULES}")
    candidates = np.unique(s)[::-1]  # descending, so argmax picks the highest on ties
    predicted = s[None, :] >= candidates[:, None]
    sens = (predicted & (y == 1)).sum(axis=1) / (y == 1).sum()
    spec = (~predicted & (y == 0)).sum(axis=1) / (y == 0).sum()
    return float(candidates[int(np.argmax(sens + spec))])


def check_rows(rows: Sequence[dict], what: str = "predictions") -> None:
    """Raise a clear error for missing keys, non-binary labels or non-finite scores."""
    if not rows:
        raise ValueError(f"{what}: no prediction rows")
    for row in rows:
        missing = [k for k in ROW_KEYS if k not in row]
        pid = str(row.get("patient_id", "?"))
        if missing:
            raise PredictionsError.of(pid, f"{what}: prediction row lacks {missing}")
        if row["label"] not in (0, 1, True, False):
            raise PredictionsError.of(pid, f"{what}: label {row['label']!r} is not 0/1")
        score = row["score"]
        if score is None or not math.isfinite(float(score)):
            raise PredictionsError.of(
                pid, f"{what}: score {score!r} of finding {row['finding_id']} is not finite"
            )


def patient_key(row: dict) -> str:
    return f"{row['site']}/{row['patient_id']}"


def headline(rows: Sequence[dict]) -> list[dict]:
    """The rows that answer the clinical question (not sampled normal tissue)."""
    return [r for r in rows if r.get("source") not in APART_SOURCES]


def patient_rows(rows: Sequence[dict], patients: Sequence[dict] | None = None) -> list[dict]:
    """Patient-level rows: max over each patient's headline findings; patients in ``patients``
    without any finding get a score below every finding's (negative by reading)."""
    out = aggregate_patients(headline(rows))
    if patients:
        seen = {patient_key(r) for r in out}
        floor = min((r["score"] for r in out), default=0.0) - 1.0
        for p in patients:
            if patient_key(p) not in seen:
                seen.add(patient_key(p))
                label = int(p.get("case_label") or 0)
                out.append(
                    {"site": str(p["site"]), "patient_id": str(p["patient_id"]), "study_id": "",
                     "finding_id": "patient", "source": "no finding", "label": label,
                     "score": floor}
                )  # fmt: skip
    return out


def aggregate_patients(rows: Sequence[dict], how: str = "max") -> list[dict]:
    """One row per (site, patient): score = max (or mean) over its findings/slices.

    Label = max of ``case_label`` when every row of the patient carries one, else max of labels.
    """
    if how not in ("max", "mean"):
        raise ValueError(f"unknown aggregation {how!r}; expected max or mean")
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[patient_key(row)].append(row)
    out = []
    for group in groups.values():
        scores = [float(r["score"]) for r in group]
        cases = [r.get("case_label") for r in group]
        has_case = all(c is not None and c != "" for c in cases)
        label = max(int(c) for c in cases) if has_case else max(int(r["label"]) for r in group)
        out.append(
            {
                "site": group[0]["site"],
                "patient_id": group[0]["patient_id"],
                "study_id": "",
                "finding_id": "patient",
                "source": "patient",
                "label": label,
                "score": max(scores) if how == "max" else float(np.mean(scores)),
            }
        )
    return out


def _columns(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    return y, s, [patient_key(r) for r in rows]


def _ranking_cis(rows, n_boot, seed, level) -> dict:
    """AUROC and AP with patient-bootstrap CIs; None estimates when a class is missing."""
    y, s, pids = _columns(rows)
    out = {"n": len(rows), "n_pos": int(y.sum()), "n_patients": len(set(pids))}
    if not _both_classes(y):
        return out | {"auroc": ci_dict(None, []), "ap": ci_dict(None, [])}

    def kernel(w):
        return np.column_stack([weighted_auroc(y, s, w), weighted_average_precision(y, s, w)])

    samples = bootstrap_statistic(pids, kernel, n_boot=n_boot, seed=seed)
    out["auroc"] = ci_dict(auroc(y, s), samples[:, 0], level)
    out["ap"] = ci_dict(average_precision(y, s), samples[:, 1], level)
    return out


def auroc_ci(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Lesion-level AUROC of prediction rows with its patient-bootstrap CI (estimate, low, high)."""
    return _ranking_cis(rows, n_boot, seed, level)["auroc"]


def _threshold_cis(y, s, pids, threshold, n_boot, seed, level) -> dict:
    predicted = s >= threshold

    def kernel(w):
        sens, spec = weighted_sens_spec(y, predicted, w)
        return np.column_stack([sens, spec, (sens + spec) / 2])

    samples = bootstrap_statistic(pids, kernel, n_boot=n_boot, seed=seed)
    point = kernel(np.ones((1, len(y))))[0]
    names = ("sensitivity", "specificity", "balanced_accuracy")
    return {"threshold": float(threshold)} | {
        name: ci_dict(point[i], samples[:, i], level) for i, name in enumerate(names)
    }


def _calibration_cis(y, p, pids, n_boot, seed, level, n_bins) -> dict:
    def kernel(w):
        return np.column_stack([weighted_mean((p - y) ** 2, w), weighted_ece(y, p, w, n_bins)])

    samples = bootstrap_statistic(pids, kernel, n_boot=n_boot, seed=seed)
    point = kernel(np.ones((1, len(y))))[0]
    return {
        "brier": ci_dict(point[0], samples[:, 0], level),
        "ece": ci_dict(point[1], samples[:, 1], level),
        "n_bins": n_bins,
    }


def _operating_thresholds(y, s, val_rows, threshold, sens90_threshold) -> dict:
    """Pick the operating and 90 %-sensitivity thresholds, recording where each came from."""
    val = None
    if val_rows:
        check_rows(val_rows, "validation predictions")
        vy, vs, _ = _columns(val_rows)
        val = (vy, vs) if _both_classes(vy) else None  # one class: no threshold to choose
    chosen = {}
    if threshold is not None:
        chosen["operating"] = (float(threshold), "given")
    elif val is not None:
        chosen["operating"] = (choose_threshold(*val, rule="youden"), "validation youden")
    elif s.min() >= 0 and s.max() <= 1:
        chosen["operating"] = (0.5, "fixed 0.5")
    elif _both_classes(y):
        chosen["operating"] = (choose_threshold(y, s, "youden"), "test youden (optimistic)")
    if sens90_threshold is not None:
        chosen["sens90"] = (float(sens90_threshold), "given")
    elif val is not None:
        chosen["sens90"] = (choose_threshold(*val, rule="sens90"), "validation")
    elif y.sum() > 0:
        chosen["sens90"] = (threshold_at_sensitivity(y, s, 0.9), "test (optimistic)")
    return chosen


def _negatives_split(rows, n_boot, seed, level) -> dict:
    """AUROC of the headline positives against the headline negatives (the clinical question)
    and against sampled normal tissue (reported apart: an easier, non-clinical question)."""
    out = {}
    scored = headline(rows)
    positives = [r for r in scored if int(r["label"]) == 1]
    groups = {
        "marked/proposed negatives": [r for r in scored if int(r["label"]) == 0],
        "sampled normal tissue": [
            r for r in rows if int(r["label"]) == 0 and r.get("source") in APART_SOURCES
        ],
    }
    for name, negatives in groups.items():
        if not negatives or not positives:
            out[name] = {"n_neg": len(negatives), "auroc": ci_dict(None, [])}
            continue
        res = _ranking_cis(positives + negatives, n_boot, seed, level)
        out[name] = {"n_neg": len(negatives), "n_pos": res["n_pos"], "auroc": res["auroc"]}
    return out


def per_site_metrics(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0, level=0.95) -> dict:
    """Site name -> {n, n_pos, n_patients, auroc (CI), ap (CI)}, bootstrapped within the site."""
    by_site: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_site[str(row["site"])].append(row)
    return {site: _ranking_cis(r, n_boot, seed, level) for site, r in sorted(by_site.items())}


def worst_site(per_site: dict) -> dict | None:
    """The site with the lowest AUROC among sites where it is defined (None if none is)."""
    defined = [
        (v["auroc"]["estimate"], s)
        for s, v in per_site.items()
        if v["auroc"]["estimate"] is not None
    ]
    if not defined:
        return None
    value, site = min(defined)
    return {"site": site, "auroc": per_site[site]["auroc"]}


def evaluate_predictions(
    rows: Sequence[dict],
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    val_rows: Sequence[dict] | None = None,
    sens90_threshold: float | None = None,
    level: float = 0.95,
    n_bins: int = 10,
    patients: Sequence[dict] | None = None,
) -> dict:
    """Every reported metric of one model on one test set, with patient-bootstrap CIs.

    Thresholds: ``threshold`` if given, else Youden on ``val_rows`` if given, else 0.5 for
    probabilities, else Youden on the test set itself (flagged "optimistic"). The 90 %-sensitivity
    threshold likewise comes from ``sens90_threshold``, ``val_rows`` or (flagged) the test set.
    Every metric dict is {"estimate", "low", "high", "n_valid"}; undefined values are None.
    Lesion metrics use the headline rows only; ``patients`` (the split's patient list, e.g.
    from the crop cache's patients.csv) adds patients without findings at the patient level.
    """
    check_rows(rows)
    everything, rows = rows, headline(rows)
    check_rows(rows, "headline predictions (reader / proposal findings)")
    y, s, pids = _columns(rows)
    lesion = _ranking_cis(rows, n_boot, seed, level)
    val_rows = headline(val_rows) if val_rows else val_rows
    chosen = _operating_thresholds(y, s, val_rows, threshold, sens90_threshold)
    for name, (value, source) in chosen.items():
        key = "operating_point" if name == "operating" else "at_sens90"
        lesion[key] = _threshold_cis(y, s, pids, value, n_boot, seed, level) | {"source": source}
    if s.min() >= 0 and s.max() <= 1:
        lesion["calibration"] = _calibration_cis(y, s, pids, n_boot, seed, level, n_bins)
    else:
        lesion["calibration"] = None  # scores are not probabilities
    site_metrics = per_site_metrics(rows, n_boot, seed, level)
    return {
        "n_findings": len(rows),
        "n_patients": len(set(pids)),
        "n_pos": int(y.sum()),
        "n_neg": int(len(y) - y.sum()),
        "lesion": lesion,
        "patient": _ranking_cis(patient_rows(rows, patients), n_boot, seed, level),
        "negatives": _negatives_split(everything, n_boot, seed, level),
        "per_site": site_metrics,
        "worst_site": worst_site(site_metrics),
        "bootstrap": {"unit": "patient", "n_boot": n_boot, "seed": seed, "level": level},
    }
