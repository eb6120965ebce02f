"""The published claims, each tested by the pre-registered paired test on the arms' predictions.

A comparison is (A, B, test, level) with delta = AUROC_B − AUROC_A, B the arm the claim favours;
the verdict of each comparison is ``verdict_from_comparison`` on the paired patient bootstrap at
level 1 − α with the pre-registered margin. A claim with several comparisons ("Swin beats ResNet
*and* ViT") is reproduced when all are, not reproduced when any is not, else inconclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedprostate.data.study import StudyError
from fedprostate.eval.compare import compare_models, verdict_from_comparison
from fedprostate.eval.metrics import headline, patient_key, patient_rows
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

# Reported with the same test, but no published claim rests on them.
SECONDARY = (
    Comparison("init-scratch", REFERENCE),
    Comparison("method-full", "method-ffa-lora"),
    Comparison("agg-fedavg", "agg-fedyogi"),
    Comparison("agg-fedavg", "agg-fedprox"),
    Comparison(REFERENCE, "uplink-fp16", "noninferior"),
    Comparison(REFERENCE, "uplink-int4", "noninferior"),
    Comparison(REFERENCE, "uplink-mixed", "noninferior"),
    Comparison("local-only", REFERENCE),
    Comparison(REFERENCE, "centralized"),
)


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
    rows_a, rows_b = headline(rows_a), headline(rows_b)
    if level == "patient":
        rows_a, rows_b = patient_rows(rows_a, patients_a), patient_rows(rows_b, patients_b)

    def key(r):
        return patient_key(r), finding_key(r)

    common = {key(r) for r in rows_a} & {key(r) for r in rows_b}
    return [r for r in rows_a if key(r) in common], [r for r in rows_b if key(r) in common]


def compare_arms(
    rows_a, rows_b, comp: Comparison, prereg: Preregistration, seed: int = 0, patients=None
) -> dict:
    """Paired test of one comparison; the verdict is computed, never typed."""
    margin = (
        prereg.margin_noninferiority if comp.test == "noninferior" else prereg.margin_superiority
    )
    patients = patients or {}
    a, b = paired_rows(rows_a, rows_b, comp.level, patients.get(comp.a), patients.get(comp.b))
    out = {"a": comp.a, "b": comp.b, "test": comp.test, "level": comp.level, "margin": margin}
    if not a:
        return out | {"verdict": "inconclusive", "error": "no finding scored by both arms"}
    try:
        result = compare_models(a, b, n_boot=prereg.n_boot, seed=seed, level=1 - prereg.alpha)
    except (StudyError, ValueError) as exc:
        return out | {"verdict": "inconclusive", "error": str(exc)}
    verdict = verdict_from_comparison(
        result, claim="superior" if comp.test == "superior" else "noninferior",
        alpha=prereg.alpha, margin=margin,
    )  # fmt: skip
    return out | {"verdict": verdict, "comparison": result}


def combine(verdicts: list[str]) -> str:
    if verdicts and all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if any(v == "not reproduced" for v in verdicts):
        return "not reproduced"
    return "inconclusive"


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


def evaluate_claims(
    predictions: dict[str, list[dict]],
    summaries: dict[str, dict],
    prereg: Preregistration,
    seed: int = 0,
    patients: dict[str, list[dict]] | None = None,
) -> dict:
    """Verdict of every claim (and secondary comparison) whose arms were run.

    ``predictions``: arm id -> test prediction rows of its chosen cell (with case labels);
    ``patients``: arm id -> the test patients of its cache (patient-level comparisons)."""
    claims = []
    for claim in CLAIMS:
        if not all(c.a in predictions and c.b in predictions for c in claim.comparisons):
            continue
        results = [
            compare_arms(predictions[c.a], predictions[c.b], c, prereg, seed, patients)
            for c in claim.comparisons
        ]
        claims.append(
            {
                "id": claim.id,
                "section": claim.section,
                "statement": claim.statement,
                "comparisons": results,
                "verdict": combine([r["verdict"] for r in results]),
            }
        )
    extra = params_claim(summaries, prereg)
    if extra:
        claims.append(extra)
    secondary = [
        compare_arms(predictions[c.a], predictions[c.b], c, prereg, seed, patients)
        for c in SECONDARY
        if c.a in predictions and c.b in predictions
    ]
    return {"claims": claims, "secondary": secondary, "preregistration": prereg.__dict__}
