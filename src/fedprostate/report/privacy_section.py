"""The privacy guarantee of one run, as the run report shows it.

Read from what the run recorded (docs/readme/privacy.md): ``summary.json``'s ``privacy`` (the
accountant's epsilon of all rounds, delta, per level), each ``metrics.jsonl`` line's ``privacy``
(epsilon of that round alone and cumulative) and ``dp`` (the clipping norm the round was
clipped at, the noise std), ``config.toml``'s ``[privacy]`` (mechanism, budget) and
``summary.json``'s ``stopped_early`` (a run stopped before the round that would exceed the budget).
Nothing here recomputes epsilon: the report shows the accountant's numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

from fedprostate.report import plots
from fedprostate.report.document import Doc
from fedprostate.report.run_data import round_history

NO_DP = "No differential privacy: this run used no DP mechanism (`privacy.client` = off, `privacy.dp_sgd` = false)."

MECHANISMS = {
    "server-fixed": "fixed clipping, clipped at the server",
    "server-adaptive": "adaptive clipping (Andrew et al. 2021), clipped at the server",
    "client-fixed": "fixed clipping, clipped at the sites, noised at the server",
    "client-adaptive": "adaptive clipping (Andrew et al. 2021), clipped at the sites, "
    "noised at the server",
    "local": "local DP: each site clips and noises its own update",
}
LEVELS = ("client", "patient")
LEVEL_NAMES = {"client": "client level (site)", "patient": "patient level (DP-SGD)"}


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    value = float(value)
    return "∞" if math.isinf(value) else f"{value:.{digits}g}"


def epsilon_history(rounds: list[dict], level: str) -> list[tuple[int, float, float]]:
    """(round, epsilon of the round alone, cumulative epsilon) of ``level`` per recorded round."""
    out = []
    for r in rounds:
        entry = (r.get("privacy") or {}).get(level)
        if entry is not None and r.get("round", 0) > 0:
            out.append((int(r["round"]), float(entry["epsilon_round"]), float(entry["epsilon"])))
    return out


def clip_history(rounds: list[dict]) -> list[tuple[int, float, float]]:
    """(round, client-level clipping norm the round was clipped at, noise std on the mean)."""
    return [
        (int(r["round"]), float(r["dp"]["clip_norm"]), float(r["dp"]["noise_std"]))
        for r in rounds
        if r.get("dp") and r.get("round", 0) > 0
    ]


def budget_status(privacy: dict, budget: float, stopped: dict | None) -> str:
    """Whether the budget ``privacy.epsilon`` was reached, from the run's final epsilon."""
    if budget <= 0:
        return "no budget set (`privacy.epsilon` = 0): epsilon is reported, not limited"
    spent = max(privacy[k]["epsilon"] for k in LEVELS if k in privacy)
    share = f"ε {_num(spent)} of {budget:g} spent ({100 * spent / budget:.0f}%)"
    if stopped and "privacy.epsilon" in str(stopped.get("reason", "")):  # a PrivacyStop
        return (
            f"budget ε = {budget:g} reached: training stopped after round {stopped['round']} "
            f"(the next round would exceed it); {share}"
        )
    if spent > budget * (1 + 1e-6):
        return f"budget ε = {budget:g} EXCEEDED: {share}"
    if spent >= budget * (1 - 1e-3):
        return f"budget ε = {budget:g} reached (all of it spent, not exceeded): {share}"
    return f"budget ε = {budget:g} not reached: {share}"


def _level_row(level: str, entry: dict, cfg: dict, clips: list) -> list[str]:
    if level == "client":
        mech = entry.get("mechanism", cfg.get("client", ""))
        how = f"`{mech}`: {MECHANISMS.get(mech, mech)}"
        if clips and "adaptive" in mech:
            norms = [c[1] for c in clips]
            clip = f"{_num(norms[0])} → {_num(norms[-1])} (adaptive)"
        else:
            clip = _num(cfg.get("clip_norm"))
    else:
        how = "DP-SGD (Opacus), the patient as the unit"
        clip = _num(entry.get("clip", cfg.get("dp_sgd_clip")))
    return [
        LEVEL_NAMES[level],
        how,
        _num(entry.get("noise_multiplier"), 4),
        clip,
        _num(entry["epsilon_round"]),
        _num(entry["epsilon"]),
    ]


def privacy_section(
    doc: Doc, summary: dict, config: dict, rounds: list[dict], figdir: Path | None = None
) -> None:
    """The guarantee of a DP run (mechanism, noise, clipping, delta, epsilon per round and
    cumulative, the budget; with ``figdir`` cumulative epsilon vs round beside the validation
    AUROC), or one line saying that the run used no differential privacy."""
    doc.heading("Privacy", 3)
    privacy = summary.get("privacy")
    if not privacy:
        doc.para(NO_DP)
        return
    cfg = config.get("privacy", {})
    clips = clip_history(rounds)
    present = [k for k in LEVELS if k in privacy]
    doc.table(
        [
            "DP level",
            "mechanism",
            "noise multiplier",
            "clipping norm",
            "ε of one round",
            f"ε cumulative ({privacy['round']} rounds)",
        ],  # fmt: skip
        [_level_row(k, privacy[k], cfg, clips) for k in present],
        f"Differential privacy: δ = {privacy['delta']:.3g}, Opacus {privacy['accountant']} "
        "accountant",
    )
    facts = [
        f"δ = {privacy['delta']:.3g}; ε per patient (the smaller of the enabled levels): "
        f"{_num(privacy.get('epsilon_patient_bound'))} after all {privacy['round']} rounds, "
        f"{_num(privacy.get('model_round_epsilon_patient_bound'))} at the shipped round "
        "(every released round counts: the first number is the run's guarantee)",
        budget_status(privacy, float(cfg.get("epsilon", 0.0)), summary.get("stopped_early")),
    ]
    if "patient" in privacy:
        facts.append(f"patient level: the worst site is {privacy['patient']['worst_site']}")
    doc.bullets(facts)
    if figdir is not None:
        _epsilon_figure(doc, privacy, float(cfg.get("epsilon", 0.0)), rounds, figdir)
    per_level = {k: {r: (one, cum) for r, one, cum in epsilon_history(rounds, k)} for k in present}
    per_round = sorted({r for hist in per_level.values() for r in hist})
    noise = {r: (c, std) for r, c, std in clips}
    header = ["round"]
    for k in present:
        header += [f"ε round ({k})", f"ε cumulative ({k})"]
    if noise:
        header += ["clip norm used (client)", "noise std on the mean"]
    rows = []
    for r in per_round:
        row = [str(r)]
        for k in present:
            one, cum = per_level[k].get(r, (None, None))
            row += [_num(one), _num(cum)]
        if noise:
            c, std = noise.get(r, (None, None))
            row += [_num(c, 4), _num(std, 4)]
        rows.append(row)
    if rows:
        doc.table(header, rows, "ε per round (that round's mechanism alone) and cumulative")


def _epsilon_figure(doc: Doc, privacy: dict, budget: float, rounds: list[dict], figdir: Path):
    curves = {
        LEVEL_NAMES[k]: [(r, cum) for r, _, cum in epsilon_history(rounds, k)]
        for k in LEVELS
        if k in privacy
    }
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return
    auroc = round_history(rounds, "val")
    path = plots.plot_epsilon_vs_round(curves, figdir / "epsilon_vs_round.png", budget, auroc)
    doc.figure(path, "Cumulative ε vs round (privacy spent), beside the validation AUROC")
