"""The study report: verdict rules and table, one section per claim, seed spread, equal-budget
views, baselines, LOSO, tuning appendix.

Every arm is a set of runs, one per training seed, at its validation-chosen learning rate
(``arms.json``). AUROCs shown per arm are seed means with the crossed patient × seed bootstrap
CI; the verdicts are ``study.claims``'s (Holm per family, reference gate, minimum test size)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedprostate.eval.bootstrap import seeded_auroc_ci
from fedprostate.eval.compare import match_seeded
from fedprostate.eval.metrics import evaluate_predictions, headline, patient_rows
from fedprostate.report import plots
from fedprostate.report.document import Doc
from fedprostate.report.run_data import (
    RunData,
    cumulative_mb,
    evaluate_run,
    load_run,
    round_history,
)
from fedprostate.report.run_report import (
    ADDED_HEADER,
    METRICS_HEADER,
    added_value_rows,
    fmt,
    fmt_ci,
    fmt_p,
    metrics_row,
)
from fedprostate.study.budgets import equal_budget_rows
from fedprostate.study.cells import REFERENCE
from fedprostate.study.claims import evaluate_claims
from fedprostate.study.config import Preregistration

SECTION_TITLES = {
    "backbone": "1. Backbone: Swin vs ResNet vs ViT",
    "method": "2. Fine-tuning method (and MB per round)",
    "compression": "3. Compression of the uplink: AUROC vs MB",
    "input": "4. Input: lesion crops vs whole organ (patient level)",
    "aggregator": "5. Aggregator",
    "pretraining": "Pre-trained vs from scratch",
    "distillation": "Distillation: a compact student of the reference arm",
    "baselines": "Centralized and local-only baselines",
    "loso": "Leave-one-site-out: a hospital that never trained",
}


def _prereg(values: dict, n_boot: int):
    keys = ("alpha", "margin_noninferiority", "margin_superiority", "params_reduction",
            "min_test_patients", "min_test_positives")  # fmt: skip
    return Preregistration(**{k: values[k] for k in keys if k in values}, n_boot=n_boot)


def holm_p_shown(comp: dict) -> float | None:
    """The Holm-adjusted p-value of the direction the comparison is decided in (for the claim when
    reproduced, against it when not reproduced), else the smaller of the two directions: a
    comparison decided against the claim and made inconclusive by Holm shows its p against."""
    p_for, p_against = comp.get("p_for_holm"), comp.get("p_against_holm")
    if comp["verdict"] == "reproduced":
        return p_for
    if comp["verdict"] == "not reproduced":
        return p_against
    known = [p for p in (p_for, p_against) if p is not None]
    return min(known) if known else None


def _delta(comp: dict) -> str:
    if "comparison" not in comp:
        return f"– ({comp.get('error', 'not computed')})"
    c = comp["comparison"]
    b = c["bootstrap"]
    ci = fmt_ci({"estimate": b["delta"], "low": b["low"], "high": b["high"]})
    p = holm_p_shown(comp)
    half = (b["high"] - b["low"]) / 2 if b["low"] is not None and b["high"] is not None else None
    text = (f"{ci} (half-width {fmt(half, 3)}), p(Holm)={fmt_p(p)}, {c['n_patients']} patients, "
            f"{b['seeds_a']}+{b['seeds_b']} seeds")  # fmt: skip
    return text + (f" — {comp['reason']}" if comp.get("reason") else "")


def _verdict_rows(claims: dict, labels: dict) -> list[list[str]]:
    rows = []
    for claim in claims["claims"]:
        if "comparisons" in claim:
            detail = "; ".join(
                f"{labels.get(c['b'], c['b'])} − {labels.get(c['a'], c['a'])} "
                f"({c['test']}, {c['level']}, margin {c['margin']:g}): {_delta(c)}"
                for c in claim["comparisons"]
            )
        else:
            detail = f"trainable params LoRA {claim['lora']:,} vs full {claim['full']:,}: " \
                     f"{claim['reduction']:.2%} fewer"  # fmt: skip
        rows.append([claim["id"], claim["statement"], detail, claim["verdict"]])
    return rows


def arm_auroc(seeds: list[RunData], level: str, n_boot: int, alpha: float) -> dict | None:
    """Seed-mean AUROC of an arm's runs with the crossed patient × seed bootstrap CI."""
    rows = [headline(d.test) for d in seeds]
    if level == "patient":
        rows = [patient_rows(r, d.patients.get("test")) for r, d in zip(rows, seeds, strict=True)]
    try:
        labels, scores, _, pids = match_seeded(rows, rows[:1])
    except ValueError:
        return None
    if len(set(labels.tolist())) < 2:
        return None
    return seeded_auroc_ci(labels, scores, pids, n_boot=n_boot, level=1 - alpha)


def _arm_row(arm: dict, choice: dict, seeds: list[RunData], ev: dict, prereg) -> list[str]:
    s = seeds[0].summary
    av = {k: v["bootstrap"] for k, v in ev["added_value"].items()}

    def gain(name):
        b = av.get(name)
        return fmt_ci({"estimate": b["delta"], "low": b["low"], "high": b["high"]}) if b else "–"

    return [
        arm["label"] or arm["id"],
        f"lr {choice['lr']:g}",
        str(len(seeds)),
        fmt_ci(arm_auroc(seeds, "lesion", prereg.n_boot, prereg.alpha)),
        fmt_ci(arm_auroc(seeds, "patient", prereg.n_boot, prereg.alpha)),
        fmt(s.get("uplink_mb_per_client_round"), 4),
        fmt(s.get("downlink_mb_per_client_round"), 4),
        str(s.get("trainable_params", "–")),
        gain("mean-ADC rule (lesion level)"),
        gain("PSA density (patient level)"),
    ]


ARM_HEADER = ["arm", "chosen on validation", "seeds", "AUROC lesion (seed mean)",
              "AUROC patient (seed mean)", "MB up/client/round", "MB down/client/round",
              "trainable params", "Δ vs mean-ADC (lesion, seed 1)",
              "Δ vs PSA density (patient, seed 1)"]  # fmt: skip


def load_arms(study_dir: Path, chosen: dict) -> dict[str, list[RunData]]:
    """Arm id -> its finished runs, one per seed (first seed first)."""
    runs = {}
    for arm_id, choice in chosen.items():
        cells = choice.get("seeds") or {"0": choice["cell"]}
        runs[arm_id] = [load_run(study_dir / "cells" / c) for _, c in sorted(
            cells.items(), key=lambda kv: (kv[1] != choice["cell"], int(kv[0])))]  # fmt: skip
    return runs


def build_study_doc(study_dir: Path) -> Doc:
    plan = json.loads((study_dir / "study.json").read_text(encoding="utf-8"))
    chosen = json.loads((study_dir / "arms.json").read_text(encoding="utf-8"))
    pre = plan["preregistered"]
    n_boot = int(pre.get("n_boot", 1000))
    prereg = _prereg(pre, n_boot)
    arms = {a["id"]: a for a in plan["arms"]}
    runs = load_arms(study_dir, chosen)
    evals = {a: evaluate_run(r[0], n_boot=n_boot, level=1 - prereg.alpha) for a, r in runs.items()}
    claims = evaluate_claims(
        {a: [d.test for d in r] for a, r in runs.items()},
        {a: r[0].summary for a, r in runs.items()},
        prereg,
        patients={a: r[0].patients.get("test", []) for a, r in runs.items()},
    )
    (study_dir / "claims.json").write_text(
        json.dumps(claims, indent=1, default=str), encoding="utf-8"
    )
    labels = {a: arms[a]["label"] or a for a in arms}
    figdir = study_dir / "plots"
    figdir.mkdir(parents=True, exist_ok=True)

    doc = Doc(f"fedprostate study report: {plan['name']}")
    _rules(doc, plan, prereg, claims)
    for note in plan.get("notes", []):
        doc.para(note, note=True)
    doc.heading("Verdicts (primary family, Holm)", 2)
    doc.table(["claim", "statement", "test (Δ = favoured − other, 95% CI, Holm p)", "verdict"],
              _verdict_rows(claims, labels))  # fmt: skip
    _secondary_section(doc, claims, labels)
    _seed_section(doc, runs, labels)
    _budget_section(doc, plan, runs, labels)
    for section in plan["sections"]:
        members = [a for a in arms.values() if section in a["sections"] and a["id"] in chosen]
        if not members:
            continue
        doc.heading(SECTION_TITLES.get(section, section), 2)
        rows = [_arm_row(a, chosen[a["id"]], runs[a["id"]], evals[a["id"]], prereg)
                for a in members]  # fmt: skip
        doc.table(ARM_HEADER, rows, "Test split; AUROC = mean over seeds with the crossed "
                  "patient × seed bootstrap 95% CI")  # fmt: skip
        missing = [labels[a["id"]] for a in arms.values()
                   if section in a["sections"] and a["id"] not in chosen]  # fmt: skip
        if missing:  # a planned arm without a finished cell is said, not silently left out
            doc.para(f"Not in this section (no finished cell): {', '.join(missing)}.", note=True)
        _section_figures(doc, section, members, {a: r[0] for a, r in runs.items()}, figdir)
        if section == "loso":
            _loso_table(doc, members, evals)
    _baselines_section(doc, {a: r[0] for a, r in runs.items()}, evals)
    _tuning_section(doc, chosen, labels)
    return doc


def _rules(doc: Doc, plan: dict, prereg: Preregistration, claims: dict) -> None:
    pre = plan["preregistered"]
    stop = pre.get("stopping", {})
    gate = claims["reference_gate"]
    doc.para(
        f"Pre-registered before any run ({plan.get('source', '')}): α = {prereg.alpha}; "
        f"superiority needs Δ > {prereg.margin_superiority:g}, non-inferiority Δ > "
        f"−{prereg.margin_noninferiority:g} (lower CI bound; the same margins everywhere); "
        f"no verdict on fewer than {prereg.min_test_patients} test patients or "
        f"{prereg.min_test_positives} positives, on a zero-variance bootstrap, or unless the "
        "reference arm's AUROC CI lies above 0.5; Holm correction over the primary family "
        f"({claims['multiplicity']['primary']} comparisons of claims 1–5) and, separately, the "
        f"secondary family ({claims['multiplicity']['secondary']}); a claim of two comparisons "
        "is reproduced only if both are, not reproduced if one is decided against it "
        f"(intersection–union). Seeds {pre.get('seeds', [0])} per arm; learning rates "
        f"{pre['learning_rates']} chosen on validation AUROC with the first seed. Stopping "
        f"rule for every arm: at most {stop.get('rounds', '?')} rounds, stop after "
        f"{stop.get('patience', 0)} scored rounds without a better validation AUROC (0: never "
        "early); each run's model is its validation-best round. Verdict budget: each arm at its "
        "own stopping point (equal-MB and equal-compute views below carry no verdict). Test: "
        f"paired bootstrap over patients and seeds ({prereg.n_boot} resamples, two-sided "
        f"{1 - prereg.alpha:.0%} CI); DeLong (first seed) secondary."
    )
    auc = gate.get("auroc") or {}
    doc.para(
        f"Reference gate: reference arm AUROC {fmt_ci(auc) if auc else '–'} — "
        + (
            "above chance, verdicts allowed."
            if gate["passed"]
            else f"**{gate['reason']}**: every verdict is inconclusive."
        )  # fmt: skip
    )


def _seed_section(doc: Doc, runs: dict, labels: dict) -> None:
    rows = []
    for arm, seeds in runs.items():
        test = [d.summary.get("test_auroc") for d in seeds]
        val = [d.summary.get("val_auroc") for d in seeds]
        finite = [x for x in test if isinstance(x, float) and x == x]
        spread = (f"{min(finite):.3f}–{max(finite):.3f}, sd {np.std(finite, ddof=1):.3f}"
                  if len(finite) > 1 else "–")  # fmt: skip
        rounds = ", ".join(str(d.summary.get("best_round", "–")) for d in seeds)
        rows.append([labels.get(arm, arm), len(seeds), " / ".join(fmt(x) for x in val),
                     " / ".join(fmt(x) for x in test), spread, rounds])  # fmt: skip
    doc.heading("Seed spread (each arm's runs at its chosen learning rate)", 2)
    doc.table(["arm", "seeds", "validation AUROC per seed", "test AUROC per seed (lesion)",
               "test range, sd", "validation-best round per seed"], rows,
              "The seeds enter every CI above through the crossed bootstrap")  # fmt: skip


def _budget_section(doc: Doc, plan: dict, runs: dict, labels: dict) -> None:
    doc.heading("Equal budgets (descriptive, no verdict)", 2)
    doc.para(
        "Each arm at the smallest total budget every arm of the section reached: the "
        "validation-best round within it, its validation and test AUROC (test read after the "
        "choice), mean over seeds. MB = every model tensor on the wire, both directions, train "
        "and evaluation broadcasts (ArrayRecord npy bytes + names); compute = training steps × "
        "batch size summed over sites."
    )
    arms = {a["id"]: a for a in plan["arms"]}
    for section in plan["sections"]:
        members = [a for a in runs if section in arms.get(a, {}).get("sections", [])]
        if len(members) < 2:
            continue
        for key, unit in (("mb", "MB"), ("examples", "examples")):
            budget, rows = equal_budget_rows(
                {labels.get(a, a): [d.rounds for d in runs[a]] for a in members}, key
            )
            if budget is None or len(rows) < 2:
                continue
            doc.table(["arm", "round (mean)", f"{unit} used", "validation AUROC", "test AUROC",
                       "seeds"], [[r[0], fmt(r[1], 1), fmt(r[2], 2 if key == "mb" else 0),
                                   fmt(r[3]), fmt(r[4]), r[5]] for r in rows],
                      f"{SECTION_TITLES.get(section, section)} at equal {unit}: "
                      f"{budget:,.{2 if key == 'mb' else 0}f}")  # fmt: skip


def _section_figures(doc: Doc, section: str, members: list[dict], runs: dict, figdir: Path) -> None:
    histories = {a["label"] or a["id"]: round_history(runs[a["id"]].rounds) for a in members}
    histories = {k: v for k, v in histories.items() if v}
    if histories and section not in ("baselines",):
        doc.figure(plots.plot_auroc_vs_round(histories, figdir / f"{section}_rounds.png"),
                   f"{section}: validation AUROC vs round")  # fmt: skip
    if section in ("method", "compression"):
        mb = {a["label"] or a["id"]: cumulative_mb(runs[a["id"]].rounds) for a in members}
        mb = {k: v for k, v in mb.items() if v}
        if mb:
            doc.figure(plots.plot_auroc_vs_mb(mb, figdir / f"{section}_mb.png"),
                       f"{section}: validation AUROC vs cumulative MB (Pareto front)")  # fmt: skip
    if section in ("backbone", "input", "baselines"):
        # the findings the tables score (sampled tissue is never a headline)
        models = {a["label"] or a["id"]: headline(runs[a["id"]].test) for a in members}
        if all(len({r["label"] for r in m}) == 2 for m in models.values()):
            doc.figure(plots.plot_roc_curves(models, figdir / f"{section}_roc.png"),
                       f"{section}: ROC curves (test)")  # fmt: skip
    if section == "baselines":
        per_site = {a["label"] or a["id"]: evaluate_predictions(runs[a["id"]].test, n_boot=200)
                    for a in members}  # fmt: skip
        doc.figure(plots.plot_per_site(per_site, figdir / "per_site.png"),
                   "AUROC per site (95% CI, 200 resamples)")  # fmt: skip


def _loso_table(doc: Doc, members: list[dict], evals: dict) -> None:
    rows = []
    for arm in members:
        site = arm["overrides"].get("data.holdout_site")
        if not site or REFERENCE not in evals:
            continue
        ref_site = evals[REFERENCE]["model"]["per_site"].get(site, {}).get("auroc")
        rows.append([site, fmt_ci(evals[arm["id"]]["model"]["lesion"]["auroc"]), fmt_ci(ref_site)])
    if rows:
        doc.table(["held-out site", "AUROC, site never trained", "AUROC, site trained (reference)"],
                  rows, "Same test findings of the held-out site")  # fmt: skip


def _baselines_section(doc: Doc, runs: dict, evals: dict) -> None:
    if REFERENCE not in evals:
        return
    ev = evals[REFERENCE]
    doc.heading("What the deep model adds over rules without deep learning", 2)

    rows = [metrics_row("reference arm", ev["model"])]
    rows += [metrics_row(n, r) for n, r in ev["baselines"].items()]
    doc.table(METRICS_HEADER, rows, "Reference arm and the two baselines on the same test findings")
    if ev["added_value"]:
        doc.table(ADDED_HEADER, added_value_rows("reference", ev))
    scores = [r["score"] for r in runs[REFERENCE].test]
    if scores and min(scores) >= 0 and max(scores) <= 1:
        figdir = runs[REFERENCE].run_dir.parent.parent / "plots"
        doc.figure(plots.plot_reliability({"reference": runs[REFERENCE].test},
                                          figdir / "reliability.png"),
                   "Reliability diagram of the reference arm (test)")  # fmt: skip


def _secondary_section(doc: Doc, claims: dict, labels: dict) -> None:
    if not claims["secondary"]:
        return
    doc.heading("Secondary comparisons (same test and rules, their own Holm family)", 2)
    doc.table(
        ["B (favoured)", "A", "test", "Δ AUROC [95% CI], Holm p", "verdict"],
        [[labels.get(c["b"], c["b"]), labels.get(c["a"], c["a"]), c["test"], _delta(c),
          c["verdict"]] for c in claims["secondary"]],
    )  # fmt: skip


def _tuning_section(doc: Doc, chosen: dict, labels: dict) -> None:
    doc.heading("Appendix: learning-rate choice (validation AUROC per cell, first seed)", 2)
    doc.table(
        ["arm", "tried (cell: validation AUROC)", "chosen"],
        [[labels.get(a, a), "; ".join(f"{c}: {fmt(v)}" for c, v in ch["tried"].items()),
          ch["cell"]] for a, ch in chosen.items()],
    )  # fmt: skip


def write_study_report(study_dir: str | Path) -> Path:
    """Write DIR/report.html and DIR/report.md for a study run by ``fedprostate study``."""
    study_dir = Path(study_dir)
    doc = build_study_doc(study_dir)
    _, page = doc.write(study_dir)
    return page
