"""The study report: verdict table, one section per claim, baselines, LOSO, tuning appendix."""

from __future__ import annotations

import json
from pathlib import Path

from fedprostate.eval.metrics import evaluate_predictions
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
    "baselines": "Centralized and local-only baselines",
    "loso": "Leave-one-site-out: a hospital that never trained",
}


def _prereg(values: dict, n_boot: int):
    keys = ("alpha", "margin_noninferiority", "margin_superiority", "params_reduction")
    return Preregistration(**{k: values[k] for k in keys if k in values}, n_boot=n_boot)


def _delta(comp: dict) -> str:
    if "comparison" not in comp:
        return f"– ({comp.get('error', 'not computed')})"
    b = comp["comparison"]["bootstrap"]
    ci = fmt_ci({"estimate": b["delta"], "low": b["low"], "high": b["high"]})
    return f"{ci}, p={fmt_p(b['p_value'])}"


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


def _arm_row(arm: dict, choice: dict, data: RunData, ev: dict) -> list[str]:
    s = data.summary
    av = {k.split(" (")[0]: v["bootstrap"] for k, v in ev["added_value"].items()}

    def gain(name):
        b = av.get(name)
        return fmt_ci({"estimate": b["delta"], "low": b["low"], "high": b["high"]}) if b else "–"

    return [
        arm["label"] or arm["id"],
        choice["cell"],
        fmt_ci(ev["model"]["lesion"]["auroc"]),
        fmt_ci(ev["model"]["patient"]["auroc"]),
        fmt(s.get("uplink_mb_per_client_round"), 4),
        str(s.get("trainable_params", "–")),
        gain("mean-ADC rule"),
        gain("PSA density"),
    ]


ARM_HEADER = ["arm", "cell", "AUROC lesion", "AUROC patient", "MB up/client/round",
              "trainable params", "Δ vs mean-ADC", "Δ vs PSAD"]  # fmt: skip


def build_study_doc(study_dir: Path) -> Doc:
    plan = json.loads((study_dir / "study.json").read_text(encoding="utf-8"))
    chosen = json.loads((study_dir / "arms.json").read_text(encoding="utf-8"))
    n_boot = int(plan["preregistered"].get("n_boot", 1000))
    prereg = _prereg(plan["preregistered"], n_boot)
    arms = {a["id"]: a for a in plan["arms"]}
    runs, evals = {}, {}
    for arm_id, choice in chosen.items():
        runs[arm_id] = load_run(study_dir / "cells" / choice["cell"])
        evals[arm_id] = evaluate_run(runs[arm_id], n_boot=n_boot, level=1 - prereg.alpha)
    claims = evaluate_claims(
        {a: r.test for a, r in runs.items()},
        {a: r.summary for a, r in runs.items()},
        prereg,
        patients={a: r.patients.get("test", []) for a, r in runs.items()},
    )
    (study_dir / "claims.json").write_text(
        json.dumps(claims, indent=1, default=str), encoding="utf-8"
    )
    labels = {a: arms[a]["label"] or a for a in arms}
    figdir = study_dir / "plots"
    figdir.mkdir(parents=True, exist_ok=True)

    doc = Doc(f"fedprostate study report: {plan['name']}")
    doc.para(
        f"Pre-registered before any run ({plan.get('source', '')}): α = {prereg.alpha}, "
        f"non-inferiority margin {prereg.margin_noninferiority} AUROC, superiority margin "
        f"{prereg.margin_superiority}, learning rates {plan['preregistered']['learning_rates']} "
        "for every arm (chosen on validation AUROC). Primary test: paired bootstrap over "
        f"patients ({n_boot} resamples, two-sided {1 - prereg.alpha:.0%} CI); DeLong secondary."
    )
    for note in plan.get("notes", []):
        doc.para(note, note=True)
    doc.heading("Verdicts", 2)
    doc.table(["claim", "statement", "test (Δ = favoured − other, 95% CI)", "verdict"],
              _verdict_rows(claims, labels))  # fmt: skip
    for section in plan["sections"]:
        members = [a for a in arms.values() if section in a["sections"] and a["id"] in chosen]
        if not members:
            continue
        doc.heading(SECTION_TITLES.get(section, section), 2)
        rows = [_arm_row(a, chosen[a["id"]], runs[a["id"]], evals[a["id"]]) for a in members]
        doc.table(ARM_HEADER, rows, "Test split, 95% CI by patient bootstrap")
        _section_figures(doc, section, members, runs, figdir)
        if section == "loso":
            _loso_table(doc, members, evals)
    _baselines_section(doc, runs, evals)
    _secondary_section(doc, claims, labels)
    _tuning_section(doc, chosen, labels)
    return doc


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
        models = {a["label"] or a["id"]: runs[a["id"]].test for a in members}
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
    doc.heading("Secondary comparisons (same test, no published claim)", 2)
    doc.table(
        ["B (favoured)", "A", "test", "Δ AUROC [95% CI], p", "verdict"],
        [[labels.get(c["b"], c["b"]), labels.get(c["a"], c["a"]), c["test"], _delta(c),
          c["verdict"]] for c in claims["secondary"]],
    )  # fmt: skip


def _tuning_section(doc: Doc, chosen: dict, labels: dict) -> None:
    doc.heading("Appendix: learning-rate choice (validation AUROC per cell)", 2)
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
