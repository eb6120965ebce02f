"""The published claims, each tested by the pre-registered paired test on the arms' predictions.

A comparison is (A, B, test, level) with Δ = AUROC_B − AUROC_A, B the arm the claim favours,
tested by the crossed patient × seed paired bootstrap at level 1 − α (``eval.compare``) and
decided by the rules of ``eval.verdicts``: threshold +margin_superiority (superiority) or
−margin_noninferiority (non-inferiority); no verdict below the pre-registered minimum test size,
on a zero-variance bootstrap, or when the reference arm's AUROC CI does not lie above 0.5.

Multiplicity: the **primary** family is every comparison of claims 1–5 (``CLAIMS``: 7
comparisons), Holm-corrected together; the **secondary** comparisons (``secondary_comparisons``:
pre-training, FFA-LoRA, other aggregators, local-only, centralized, the compression arms beyond
int8, the distilled student; no published claim rests on them) are Holm-corrected as their own
family. A claim of several comparisons is reproduced only if every comparison is
(intersection–union), not reproduced if any is decided against it, else inconclusive
(``eval.verdicts.combine``). Claim 2b is a parameter count, not a test.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedprostate.data.study import StudyError
from fedprostate.eval.bootstrap import seeded_auroc_ci
from fedprostate.eval.compare import compare_models, match_seeded
from fedprostate.eval.metrics import headline, patient_key, patient_rows
from fedprostate.eval.verdicts import (
    apply_holm,
    combine,
    size_gate,
    threshold,
    verdict,
    verdict_from_comparison,
)
from fedprostate.records.predictions import finding_key
from fedprostate.study.cells import REFERENCE
from fedprostate.study.config import Preregistration


@dataclass(frozen=True)
class Comparison:
    a: str  # arm the claim says is worse (or the standard, for non-inferiority)
    b: str  # arm the claim favours
    test: str = "superior"  # superior | noninferior
    level: str = "lesion"  # lesion | patient


@dataclass(frozen=True)
class Claim:
    id: str
    section: str
    statement: str
    comparisons: tuple[Comparison, ...]


CLAIMS = (
    Claim("1", "backbone", "Swin-T beats ResNet-50 and ViT",
          (Comparison("backbone-resnet", REFERENCE), Comparison("backbone-vit", REFERENCE))),
    Claim("2", "method", "Adapters and LoRA beat full fine-tuning in federated learning",
          (Comparison("method-full", REFERENCE), Comparison("method-full", "method-adapter"))),
    Claim("3", "compression", "LoRA + int8 uplink is non-inferior to LoRA fp32",
          (Comparison(REFERENCE, "uplink-int8", "noninferior"),)),
    Claim("4", "input", "Lesion crops beat whole-organ input (scored per patient)",
          (Comparison("input-organ", REFERENCE, "superior", "patient"),)),
    Claim("5", "aggregator", "FedAdam beats FedAvg",
          (Comparison("agg-fedavg", REFERENCE),)),
)  # fmt: skip

# Reported with the same test and verdict rules, Holm-corrected as their own family.
SECONDARY = (
    Comparison("init-scratch", REFERENCE),
    Comparison("method-full", "method-ffa-lora"),
    Comparison("agg-fedavg", "agg-fedyogi"),
    Comparison("agg-fedavg", "agg-fedprox"),
    Comparison("local-only", REFERENCE),
    Comparison("centralized", REFERENCE, "noninferior"),
    Comparison(REFERENCE, "distill-student", "noninferior"),
)


def primary_comparisons() -> list[Comparison]:
    return [c for claim in CLAIMS for c in claim.comparisons]


def secondary_comparisons(arm_ids) -> list[Comparison]:
    """SECONDARY, then non-inferiority to LoRA fp32 of every compression arm but int8 (whose
    non-inferiority is claim 3)."""
    codecs = [
        Comparison(REFERENCE, a, "noninferior")
        for a in sorted(arm_ids)
        if a.startswith("uplink-") and a != "uplink-int8"
    ]
    return [*SECONDARY, *codecs]


def paired_rows(
    rows_a: list[dict],
    rows_b: list[dict],
    level: str,
    patients_a: list[dict] | None = None,
    patients_b: list[dict] | None = None,
) -> tuple[list, list]:
    """Both arms' rows at ``level``, restricted to the findings (patients) both scored.

    Only headline rows count (reader/proposal findings, organ slices; never sampled tissue).
    Patient level: max over a patient's findings, and a patient of the arm's split with no
    finding scores as negative by reading — so a lesion arm is compared with an organ arm on
    every patient, and it sees only the findings a reader marked or the rule proposed."""
    a, b = paired_seed_rows([rows_a], [rows_b], level, patients_a, patients_b)
    return a[0], b[0]


def _key(r: dict) -> tuple:
    return patient_key(r), finding_key(r)


def paired_seed_rows(
    seeds_a: list[list[dict]],
    seeds_b: list[list[dict]],
    level: str,
    patients_a: list[dict] | None = None,
    patients_b: list[dict] | None = None,
) -> tuple[list[list[dict]], list[list[dict]]]:
    """``paired_rows`` for several seeds per arm: every seed kept on the findings all share."""

    def prepared(rows, patients):
        rows = headline(rows)
        return patient_rows(rows, patients) if level == "patient" else rows

    a = [prepared(r, patients_a) for r in seeds_a]
    b = [prepared(r, patients_b) for r in seeds_b]
    common = set.intersection(*({_key(r) for r in rows} for rows in a + b))
    keep = [[r for r in rows if _key(r) in common] for rows in a + b]
    return keep[: len(a)], keep[len(a) :]


def as_seeds(rows) -> list[list[dict]]:
    """An arm's predictions: a row list (one seed) or a list of row lists (one per seed)."""
    return rows if rows and isinstance(rows[0], list) else [rows]


def compare_arms(
    rows_a, rows_b, comp: Comparison, prereg: Preregistration, seed: int = 0, patients=None
) -> dict:
    """Paired test of one comparison (before multiplicity); the verdict is computed, never typed.

    ``rows_a``/``rows_b``: an arm's test rows, or one row list per training seed."""
    claim = "superior" if comp.test == "superior" else "noninferior"
    margin = prereg.margin_noninferiority if claim == "noninferior" else prereg.margin_superiority
    patients = patients or {}
    a, b = paired_seed_rows(
        as_seeds(rows_a), as_seeds(rows_b), comp.level, patients.get(comp.a), patients.get(comp.b)
    )
    out = {"a": comp.a, "b": comp.b, "test": comp.test, "level": comp.level, "margin": margin,
           "threshold": threshold(claim, margin)}  # fmt: skip
    if not a[0]:
        return out | {"verdict": "inconclusive", "error": "no finding scored by both arms"}
    try:
        result = compare_models(a, b, n_boot=prereg.n_boot, seed=seed, level=1 - prereg.alpha,
                                threshold=out["threshold"])  # fmt: skip
    except (StudyError, ValueError) as exc:
        return out | {"verdict": "inconclusive", "error": str(exc)}
    boot = result["bootstrap"]
    out |= {"comparison": result, "p_for": boot["p_for"], "p_against": boot["p_against"]}
    n_pos = result["n_positive_patients" if comp.level == "patient" else "n_positive_findings"]
    why = size_gate(result["n_patients"], n_pos, prereg.min_test_patients,
                    prereg.min_test_positives)  # fmt: skip
    if why is None and boot["flat"]:
        why = "zero-variance bootstrap (every resample gives the same Δ): no evidence either way"
    decided = verdict_from_comparison(result, claim=claim, alpha=prereg.alpha, margin=margin)
    if why is not None:  # what the CI alone would say, kept to show what the gate withheld
        ungated = verdict(boot["low"], boot["high"], claim=claim, margin=margin)
        return out | {"verdict": "inconclusive", "verdict_ungated": ungated, "reason": why}
    return out | {"verdict": decided}


def params_claim(summaries: dict[str, dict], prereg: Preregistration) -> dict | None:
    """Claim 2b: LoRA trains ~99 % fewer parameters than full fine-tuning (a count, no CI)."""
    full, lora = summaries.get("method-full"), summaries.get(REFERENCE)
    if not full or not lora or not full.get("trainable_params"):
        return None
    reduction = 1 - lora["trainable_params"] / full["trainable_params"]
    return {
        "id": "2b",
        "section": "method",
        "statement": f"LoRA trains ~{prereg.params_reduction:.0%} fewer parameters than full FT",
        "full": full["trainable_params"],
        "lora": lora["trainable_params"],
        "reduction": reduction,
        "verdict": "reproduced" if reduction >= prereg.params_reduction else "not reproduced",
    }


def reference_gate(predictions: dict, prereg: Preregistration, seed: int = 0) -> dict:
    """The reference arm's lesion-level AUROC with its crossed patient × seed bootstrap CI; no
    verdict is given unless the CI lies above 0.5 (a model at chance decides nothing)."""
    if REFERENCE not in predictions:
        return {"passed": False, "reason": "the reference arm has no test predictions"}
    seeds = [headline(rows) for rows in as_seeds(predictions[REFERENCE])]
    try:
        labels, scores, _, pids = match_seeded(seeds, seeds[:1])
    except (StudyError, ValueError) as exc:
        return {"passed": False, "reason": f"reference arm predictions unusable: {exc}"}
    if len(set(labels.tolist())) < 2:
        return {"passed": False, "reason": "the reference arm's test findings have one class"}
    ci = seeded_auroc_ci(labels, scores, pids, n_boot=prereg.n_boot, seed=seed,
                         level=1 - prereg.alpha)  # fmt: skip
    passed = ci["low"] is not None and ci["low"] > 0.5
    reason = "" if passed else f"reference arm AUROC CI low {ci['low']} is not above 0.5"
    return {"passed": passed, "auroc": ci, "reason": reason}


def family(comparisons, predictions, prereg, seed, patients, gate: dict) -> list[dict]:
    """Test every comparison whose arms ran, Holm over them, then the reference gate."""
    results = [
        compare_arms(predictions[c.a], predictions[c.b], c, prereg, seed, patients)
        for c in comparisons
        if c.a in predictions and c.b in predictions
    ]
    apply_holm(results, prereg.alpha)
    if not gate["passed"]:
        for r in results:
            if r["verdict"] != "inconclusive":
                r["verdict_ungated"] = r["verdict"]
            r["verdict"], r["reason"] = "inconclusive", gate["reason"]
    return results


def evaluate_claims(
    predictions: dict[str, list],
    summaries: dict[str, dict],
    prereg: Preregistration,
    seed: int = 0,
    patients: dict[str, list[dict]] | None = None,
) -> dict:
    """Verdict of every claim (and secondary comparison) whose arms were run.

    ``predictions``: arm id -> test prediction rows of its chosen cell, or one row list per
    training seed; ``patients``: arm id -> the test patients of its cache (patient level)."""
    gate = reference_gate(predictions, prereg, seed)
    primary = family(primary_comparisons(), predictions, prereg, seed, patients, gate)
    by_key = {(r["a"], r["b"], r["test"], r["level"]): r for r in primary}
    claims = []
    for claim in CLAIMS:
        keys = [(c.a, c.b, c.test, c.level) for c in claim.comparisons]
        if not all(k in by_key for k in keys):
            continue
        results = [by_key[k] for k in keys]
        claims.append({"id": claim.id, "section": claim.section, "statement": claim.statement,
                       "comparisons": results,
                       "verdict": combine([r["verdict"] for r in results])})  # fmt: skip
    extra = params_claim(summaries, prereg)
    if extra:
        claims.append(extra)
    secondary = family(
        secondary_comparisons(predictions), predictions, prereg, seed, patients, gate
    )
    return {
        "claims": claims,
        "secondary": secondary,
        "reference_gate": gate,
        "preregistration": prereg.__dict__,
        "multiplicity": {"method": "holm", "primary": len(primary), "secondary": len(secondary)},
    }
