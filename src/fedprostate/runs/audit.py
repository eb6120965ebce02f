"""``fedprostate audit RUN``: membership-inference attacks against a run's shipped model.

Members are the sites' training patients, non-members the held-out (validation and test)
patients of the same sites; each attack scores a patient (``eval.membership``). The report puts
each attack's AUC (with a patient-bootstrap CI) next to the largest AUC the run's reported
(epsilon, delta) allows. Written to ``RUN/membership_audit.json``.

Not done here (stated in docs/readme/privacy.md): shadow-model and LiRA attacks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fedprostate.engine import setup
from fedprostate.engine.loop import predict_scores
from fedprostate.eval.membership import (
    ATTACKS,
    attack_scores,
    auc_with_ci,
    dp_auc_bound,
    per_patient,
)
from fedprostate.runs.export import load_run_model

AUDIT_OUT = "membership_audit.json"
HELD_OUT = ("val", "test")


def _patients(cfg, model, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(patient key, P(csPCa), labels) of every crop of ``split`` at every site."""
    out = []
    for site in setup.client_names(cfg):
        ds = setup.client_dataset(cfg, site, split)
        if len(ds) == 0:
            continue
        probs, labels = predict_scores(model, ds)
        keys = [f"{site}/{r['patient_id']}" for r in ds.rows]
        out.append((keys, probs, labels))
    return out


def audit_run(run_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> dict:
    run = Path(run_dir)
    cfg, ft, _, source, summary = load_run_model(run)
    setup.check_run_data(cfg)
    parts = {"member": _patients(cfg, ft.model, "train")}
    parts["non_member"] = [p for split in HELD_OUT for p in _patients(cfg, ft.model, split)]
    keys, probs, labels, member = [], [], [], []
    for flag, name in ((1, "member"), (0, "non_member")):
        for k, p, y in parts[name]:
            keys += k
            probs.append(p)
            labels.append(y)
            member += [flag] * len(k)
    if not keys or not any(member) or all(member):
        raise ValueError(f"{run}: the audit needs both training and held-out patients")
    probs_all, labels_all, member_all = (
        np.concatenate(probs),
        np.concatenate(labels),
        np.asarray(member),
    )
    report: dict = {"run": str(run), "weights": source, "unit": "patient", "attacks": {}}
    for attack in ATTACKS:
        scores, order = per_patient(attack_scores(probs_all, labels_all, attack), keys)
        flags, _ = per_patient(member_all.astype(float), keys)
        report["attacks"][attack] = auc_with_ci(flags.astype(int), scores, n_boot, seed)
    dp = summary.get("privacy") or {}
    eps = dp.get("epsilon_patient_bound", math.inf)
    report["privacy"] = {
        "epsilon": eps if eps is not None else math.inf,
        "delta": dp.get("delta"),
        "auc_bound": dp_auc_bound(eps if eps is not None else math.inf, dp.get("delta") or 0.0),
    }
    (run / AUDIT_OUT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
