"""``report.html`` + ``report.md`` for one run (``fedprostate report RUN``) or a whole study.

Everything shown is computed here from the run's files: prediction CSVs (metrics with patient
bootstrap CIs), the crop-cache index (mean-ADC and PSA-density baselines, case labels),
metrics.jsonl (AUROC per round, bytes) and summary.json. Study verdicts come from
``fedprostate.study.claims`` (the pre-registered paired test), never from hand-written text.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedprostate.eval.metrics import headline
from fedprostate.report import plots
from fedprostate.report.document import Doc
from fedprostate.report.privacy_section import privacy_section
from fedprostate.report.run_data import (
    RunData,
    adc_baseline_rows,
    cumulative_mb,
    evaluate_run,
    load_run,
    round_history,
)


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(ci: dict | None, digits: int = 3) -> str:
    """``0.812 [0.750, 0.870]`` from an {"estimate", "low", "high"} dict."""
    if not ci or ci.get("estimate") is None:
        return "–"
    if ci.get("low") is None:
        return fmt(ci["estimate"], digits)
    return f"{ci['estimate']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def fmt_p(p) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# Baselines scored once per patient: their lesion-level cells would repeat patient numbers.
PATIENT_ONLY = ("PSA density",)


def metrics_row(name: str, result: dict) -> list[str]:
    lesion = result["lesion"]
    op = lesion.get("operating_point") or {}
    cal = lesion.get("calibration") or {}
    if name in PATIENT_ONLY:
        return [name, "–", str(result["n_patients"]), "– (patient level)", "–",
                fmt_ci(result["patient"]["auroc"]), "–", "–", "–", "–"]  # fmt: skip
    return [
        name,
        str(result["n_findings"]),
        str(result["n_patients"]),
        fmt_ci(lesion["auroc"]),
        fmt_ci(lesion["ap"]),
        fmt_ci(result["patient"]["auroc"]),
        fmt_ci(op.get("sensitivity")),
        fmt_ci(op.get("specificity")),
        fmt_ci(cal.get("brier")),
        fmt_ci(cal.get("ece")),
    ]


METRICS_HEADER = [
    "model",
    "findings",
    "patients",
    "AUROC (lesion)",
    "AP (lesion)",
    "AUROC (patient)",
    "sensitivity",
    "specificity",
    "Brier",
    "ECE",
]


def added_value_rows(model: str, evaluation: dict) -> list[list[str]]:
    rows = []
    for baseline, comp in evaluation["added_value"].items():
        boot, delong = comp["bootstrap"], comp["delong"]
        rows.append(
            [
                f"{model} vs {baseline}",
                fmt(boot["auroc_a"]),
                fmt(boot["auroc_b"]),
                fmt_ci({"estimate": boot["delta"], "low": boot["low"], "high": boot["high"]}),
                fmt_p(boot["p_value"]),
                fmt_p(delong["p_value"]),
            ]
        )
    return rows


ADDED_HEADER = [
    "comparison",
    "AUROC baseline",
    "AUROC model",
    "Δ AUROC [95% CI]",
    "p (patient bootstrap)",
    "p (DeLong)",
]


def _run_facts(data: RunData) -> list[str]:
    s, cfg = data.summary, data.config
    facts = [
        f"kind: `{s.get('kind', 'federated')}`",
        f"backbone `{cfg.get('model', {}).get('arch')}` at {cfg.get('model', {}).get('crop')} px,"
        f" fine-tuning `{cfg.get('finetune', {}).get('method')}`,"
        f" foundation `{cfg.get('model', {}).get('foundation') or 'none (random init)'}`",
        f"strategy `{cfg.get('fl', {}).get('strategy')}`, rounds {s.get('rounds')},"
        f" best round (validation) {s.get('best_round', '–')}",
        f"uplink codec `{cfg.get('compress', {}).get('uplink')}`:"
        f" {fmt(s.get('uplink_mb_per_client_round'), 4)} MB up and"
        f" {fmt(s.get('downlink_mb_per_client_round'), 4)} MB down per client per round,"
        f" total {fmt(s.get('total_mb'), 3)} MB",
        f"trainable parameters {s.get('trainable_params', '–')}, wall time {s.get('wall_s')} s",
    ]
    return facts


def run_section(doc: Doc, data: RunData, evaluation: dict, figdir: Path, title: str) -> None:
    """Tables and figures of one run (shared by the run report and the study appendix)."""
    doc.heading(title, 2)
    doc.bullets(_run_facts(data))
    rows = [metrics_row("this model", evaluation["model"])]
    rows += [metrics_row(n, r) for n, r in evaluation["baselines"].items()]
    doc.table(
        METRICS_HEADER,
        rows,
        "Test split: the findings a radiologist marked (or the label-free rule proposed); "
        "patient AUROC counts patients with no finding as negative by reading. 95% CIs by "
        "bootstrap over patients; operating point chosen on validation",
    )
    if evaluation["added_value"]:
        doc.para(
            "What the deep model adds over the rules that need no deep learning "
            "(Δ = model − baseline, paired bootstrap over patients):"
        )
        doc.table(ADDED_HEADER, added_value_rows("model", evaluation))
    for name, reason in evaluation.get("skipped", {}).items():
        doc.para(f"Comparison with {name} not computed: {reason}.", note=True)
    neg = evaluation["model"]["negatives"]
    doc.table(
        ["negatives", "n", "AUROC vs all positives"],
        [[k, v["n_neg"], fmt_ci(v["auroc"])] for k, v in neg.items()],
        "The headline question (csPCa vs the benign findings a reader marked or the rule proposed) "
        "and, apart, csPCa vs sampled normal tissue (an easier question, never a headline)",
    )
    worst = evaluation["model"]["worst_site"]
    if worst:
        doc.para(f"Worst site: {worst['site']} (AUROC {fmt_ci(worst['auroc'])}).")
    figdir.mkdir(parents=True, exist_ok=True)
    curves = {
        "validation": round_history(data.rounds, "val"),
        "test": round_history(data.rounds, "test"),
    }
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        doc.figure(
            plots.plot_auroc_vs_round(curves, figdir / "auroc_vs_round.png"), "AUROC vs round"
        )
    findings = headline(data.test)  # the curves show the table's rows: no sampled tissue
    models = {"model": findings}
    adc_rows = None
    if "mean-ADC rule" in evaluation["baselines"]:
        adc_rows = adc_baseline_rows(data)
        models["mean-ADC rule"] = adc_rows
    if len({r["label"] for r in findings}) == 2:
        doc.figure(
            plots.plot_roc_curves(models, figdir / "roc.png"), "ROC curves (test, lesion level)"
        )
        doc.figure(
            plots.plot_pr_curves(models, figdir / "pr.png"),
            "Precision-recall curves (test, finding level)",
        )
    per_site = {"model": evaluation["model"]}
    if "mean-ADC rule" in evaluation["baselines"]:
        per_site["mean-ADC rule"] = evaluation["baselines"]["mean-ADC rule"]
    doc.figure(plots.plot_per_site(per_site, figdir / "per_site.png"), "AUROC per site (95% CI)")
    scores = [r["score"] for r in findings]
    if min(scores) >= 0 and max(scores) <= 1:
        doc.figure(
            plots.plot_reliability({"model": findings}, figdir / "reliability.png"),
            "Reliability diagram (test)",
        )
    bytes_rows = _bytes_table(data)
    if bytes_rows:
        doc.table(["site", "MB up / round", "MB down / round"], bytes_rows, "Bytes on the wire")
    privacy_section(doc, data.summary, data.config, data.rounds, figdir)


def _bytes_table(data: RunData) -> list[list[str]]:
    up = data.summary.get("uplink_mb_per_site") or {}
    down = data.summary.get("downlink_mb_per_site") or {}
    return [[s, fmt(up.get(s), 4), fmt(down.get(s), 4)] for s in sorted(up)]


def write_run_report(
    run_dir: str | Path, n_boot: int | None = None, cache: str | Path | None = None
) -> Path:
    """Write RUN/report.html and RUN/report.md; returns the HTML path."""
    data = load_run(run_dir, cache=cache)
    n_boot = n_boot or int(data.config.get("eval", {}).get("n_boot", 1000))
    evaluation = evaluate_run(data, n_boot=n_boot, seed=int(data.config.get("seed", 0)))
    run_path = Path(run_dir).resolve()
    doc = Doc(f"fedprostate run report: {run_path.parent.name}/{run_path.name}")
    if not data.index:
        doc.para(
            "The crop cache named in config.toml was not found: baselines and patient case "
            "labels are missing (pass --cache).",
            note=True,
        )
    run_section(doc, data, evaluation, Path(run_dir) / "plots", "Results")
    (Path(run_dir) / "evaluation.json").write_text(
        json.dumps(evaluation, indent=1, default=str), encoding="utf-8"
    )
    _, page = doc.write(run_dir)
    return page


__all__ = ["write_run_report", "fmt", "fmt_ci", "fmt_p", "cumulative_mb"]
