"""``fedprostate audit RUN``: membership-inference attacks against a run's shipped model.

Members are the sites' training patients, non-members the held-out (validation and test)
patients of the same sites; each attack scores a patient. ``loss`` and ``confidence``
(``eval.membership``) need only the shipped model; ``--shadows K`` adds offline and online LiRA
(``eval.lira``) with K shadow models trained on halves of the audit pool (``runs.lira``). The
report puts each attack's AUC (with a patient-bootstrap CI) and its TPR at low false-positive
rates next to the largest AUC the run's reported (epsilon, delta) allows. Written to
``RUN/membership_audit.json``; the method and measured numbers are in the README (Privacy,
"Membership-inference audit").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedprostate.data.cache import CropDataset
from fedprostate.engine import setup
from fedprostate.engine.loop import predict_scores
from fedprostate.eval.lira import (
    MIN_SHADOWS,
    lira_scores,
    logit_confidence,
    low_fpr_report,
    split_pool,
)
from fedprostate.eval.membership import (
    ATTACKS,
    attack_scores,
    auc_with_ci,
    dp_auc_bound,
    per_patient,
)
from fedprostate.runs.export import load_run_model
from fedprostate.runs.lira import shadow_phi

AUDIT_OUT = "membership_audit.json"
HELD_OUT = ("val", "test")


def audit_pool(cfg) -> tuple[CropDataset, list[str], np.ndarray]:
    """(every training and held-out crop of every site, its patient key, 1 = training crop)."""
    rows, keys, member = [], [], []
    for site in setup.client_names(cfg):
        for split in ("train", *HELD_OUT):
            ds = setup.client_dataset(cfg, site, split)
            rows += ds.rows
            keys += [f"{site}/{r['patient_id']}" for r in ds.rows]
            member += [int(split == "train")] * len(ds)
    return CropDataset(cfg.data.cache, rows), keys, np.asarray(member)


def _attack(flags: np.ndarray, scores: np.ndarray, n_boot: int, seed: int) -> dict:
    return {**auc_with_ci(flags, scores, n_boot, seed), **low_fpr_report(flags, scores)}


def audit_run(
    run_dir: str | Path,
    n_boot: int = 1000,
    seed: int = 0,
    shadows: int | None = None,
    shadow_steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Attack the run's shipped model; ``shadows`` (>= 2) adds LiRA with that many shadows."""
    if shadows is not None and shadows < MIN_SHADOWS:
        raise ValueError(
            f"--shadows {shadows}: LiRA needs at least {MIN_SHADOWS} shadow models "
            "(each patient IN for half of them, OUT for the rest)"
        )
    run = Path(run_dir)
    cfg, ft, _, source, summary = load_run_model(run)
    setup.check_run_data(cfg)
    pool, keys, member = audit_pool(cfg)
    if not keys or not member.any() or member.all():
        raise ValueError(f"{run}: the audit needs both training and held-out patients")
    probs, labels = predict_scores(ft.model, pool)
    flags, patients = per_patient(member.astype(float), keys)
    flags = flags.astype(int)
    report: dict = {"run": str(run), "weights": source, "unit": "patient", "attacks": {}}
    for attack in ATTACKS:
        scores, _ = per_patient(attack_scores(probs, labels, attack), keys)
        report["attacks"][attack] = _attack(flags, scores, n_boot, seed)
    if shadows is not None:
        is_in = split_pool(len(patients), shadows, seed)
        phi, cost = shadow_phi(cfg, summary, pool, keys, is_in, shadow_steps, progress)
        target, _ = per_patient(logit_confidence(probs, labels), keys)
        lira = lira_scores(target, phi, is_in)
        for variant in ("offline", "online"):
            report["attacks"][f"lira_{variant}"] = _attack(flags, lira[variant], n_boot, seed)
        report["lira"] = {
            **cost,
            "sigma": lira["sigma"],
            "attacker_knows": "the audit pool (training and held-out patients, images and "
            "labels) and the run's recipe; shadows train pooled, without client-level DP",
            "ci": "patients resampled; shadows not retrained",
        }
    dp = summary.get("privacy") or {}
    eps = dp.get("epsilon_patient_bound", math.inf)
    report["privacy"] = {
        "epsilon": eps if eps is not None else math.inf,
        "delta": dp.get("delta"),
        "auc_bound": dp_auc_bound(eps if eps is not None else math.inf, dp.get("delta") or 0.0),
    }
    (run / AUDIT_OUT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
