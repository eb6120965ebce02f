"""Report figures (matplotlib, Agg backend). Each function writes one PNG and returns its path.

Inputs are plain data: ``(labels, scores)`` pairs or prediction-row lists per model, the
``per_site`` part of ``evaluate_predictions`` results, and per-round histories per arm.
"""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullLocator  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from fedprostate.eval.bootstrap import calibration_bins  # noqa: E402


def _labels_scores(data) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) from a pair of arrays or from a list of prediction-row dicts."""
    if isinstance(data, Sequence) and data and isinstance(data[0], Mapping):
        return (
            np.array([int(r["label"]) for r in data]),
            np.array([float(r["score"]) for r in data]),
        )
    labels, scores = data
    return np.asarray(labels).astype(int), np.asarray(scores, dtype=float)


def _save(fig, path, legend_room: float = 0.0) -> Path:
    """Write the figure; ``legend_room``: the fraction of its width kept for a legend beside
    the axes (a fixed size, so the same plot of other data has the same pixels' shape)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    if legend_room:
        fig.subplots_adjust(right=1.0 - legend_room)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Arms that score alike draw one over the other: each line gets its own dash and marker.
_DASHES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _style(i: int) -> dict:
    return {"ls": _DASHES[i % len(_DASHES)], "marker": _MARKERS[i % len(_MARKERS)], "ms": 4}


LEGEND_ROOM = 0.3  # of a 8.6-inch-wide figure: 2.6 inches, 28 characters at 8 pt


def _legend_beside(ax) -> None:
    """The legend right of the axes (inside, with several arms, it hid their lines); long arm
    names wrap at 28 characters."""
    handles, labels = ax.get_legend_handles_labels()
    labels = [textwrap.fill(label, 28) for label in labels]
    legend = ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    legend.set_in_layout(False)  # tight_layout sizes the axes; _save keeps room for it


def _require(items: Mapping, what: str) -> None:
    if not items:
        raise ValueError(f"nothing to plot: no {what} given")


def plot_roc_curves(models: Mapping[str, object], path, title: str = "ROC curves") -> Path:
    """One ROC curve per model (legend shows its AUROC). models: name -> (labels, scores) | rows."""
    _require(models, "models")
    fig, ax = plt.subplots(figsize=(5, 5))
    for i, (name, data) in enumerate(models.items()):
        y, s = _labels_scores(data)
        if y.min() == y.max():
            raise ValueError(f"ROC of {name!r} needs both classes")
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(
            fpr,
            tpr,
            ls=_DASHES[i % len(_DASHES)],
            label=f"{name} (AUROC {roc_auc_score(y, s):.3f})",
        )
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.02))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr_curves(
    models: Mapping[str, object], path, title: str = "Precision-recall curves"
) -> Path:
    """One precision-recall curve per model (legend: its finding-level AP), with the chance
    level (the positive fraction) dashed. models: name -> (labels, scores) | prediction rows."""
    _require(models, "models")
    fig, ax = plt.subplots(figsize=(5, 5))
    prevalence = None
    for i, (name, data) in enumerate(models.items()):
        y, s = _labels_scores(data)
        if y.min() == y.max():
            raise ValueError(f"PR curve of {name!r} needs both classes")
        precision, recall, _ = precision_recall_curve(y, s)
        ap = average_precision_score(y, s)
        ax.step(
            recall,
            precision,
            where="post",
            ls=_DASHES[i % len(_DASHES)],
            label=f"{name} (AP {ap:.3f})",
        )
        prevalence = float(y.mean()) if prevalence is None else prevalence
    ax.axhline(prevalence, ls="--", c="grey", lw=0.8, label=f"chance ({prevalence:.2f})")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_reliability(
    models: Mapping[str, object], path, n_bins: int = 10, title: str = "Reliability diagram"
) -> Path:
    """Observed positive fraction vs mean predicted probability per equal-width bin."""
    _require(models, "models")
    fig, ax = plt.subplots(figsize=(5, 5))
    for i, (name, data) in enumerate(models.items()):
        y, p = _labels_scores(data)
        if p.min() < 0 or p.max() > 1:
            raise ValueError(f"reliability diagram of {name!r} needs probabilities in [0, 1]")
        bins = calibration_bins(p, n_bins)
        used = np.unique(bins)
        mean_p = np.array([p[bins == b].mean() for b in used])
        frac = np.array([y[bins == b].mean() for b in used])
        ax.plot(mean_p, frac, **_style(i), label=name)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect calibration")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction positive", title=title)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))  # a bin at 0 or 1 is not cut in half
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_per_site(
    results: Mapping[str, Mapping], path, metric: str = "auroc", title: str | None = None
) -> Path:
    """Grouped bars per site with CI whiskers. results: model -> evaluate_predictions() output
    (or its "per_site" dict: site -> {metric: {"estimate", "low", "high"}})."""
    _require(results, "results")
    per_model = {m: (r["per_site"] if "per_site" in r else r) for m, r in results.items()}
    sites = sorted({s for ps in per_model.values() for s in ps})
    width = 0.8 / len(per_model)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(sites) * len(per_model) + 2), 4))
    for i, (model, per_site) in enumerate(per_model.items()):
        est, err_lo, err_hi = [], [], []
        for site in sites:
            ci = per_site.get(site, {}).get(metric) or {}
            e = ci.get("estimate")
            est.append(np.nan if e is None else e)
            err_lo.append(0 if e is None or ci.get("low") is None else e - ci["low"])
            err_hi.append(0 if e is None or ci.get("high") is None else ci["high"] - e)
        x = np.arange(len(sites)) + (i - (len(per_model) - 1) / 2) * width
        ax.bar(x, est, width, yerr=[err_lo, err_hi], capsize=3, label=model)
        for xi, e in zip(x, est, strict=True):  # a site without a value (one class): said
            if not np.isfinite(e):
                ax.text(xi, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(np.arange(len(sites)), sites, rotation=45, ha="right")
    ax.set(ylabel=metric.upper(), title=title or f"{metric.upper()} per site (95% CI)")
    if metric in ("auroc", "ap"):  # a band above 1 for the legend: it never hides a bar
        ax.set_ylim(0, 1.22)
        ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(fontsize=8, loc="upper center", ncol=min(len(per_model), 4))
    return _save(fig, path)


def _pairs(points, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) arrays from a list of (x, y) tuples or of dicts carrying x_key and y_key."""
    if not points:
        return np.array([]), np.array([])
    if isinstance(points[0], Mapping):
        pts = [(p[x_key], p[y_key]) for p in points if p.get(y_key) is not None]
    else:
        pts = [tuple(p) for p in points]
    arr = np.array(pts, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def plot_auroc_vs_round(
    histories: Mapping[str, Sequence], path, metric: str = "auroc", title: str | None = None
) -> Path:
    """One line per arm: metric vs federated round. history: [(round, value)] or metrics.jsonl
    dicts with keys "round" and ``metric``."""
    _require(histories, "histories")
    fig, ax = plt.subplots(figsize=(8.6, 4))
    for i, (arm, history) in enumerate(histories.items()):
        rounds, values = _pairs(history, "round", metric)
        ax.plot(rounds, values, **_style(i), label=arm)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set(
        xlabel="round",
        ylabel=metric.upper(),
        title=title or f"{metric.upper()} vs round",
    )
    _legend_beside(ax)
    return _save(fig, path, LEGEND_ROOM)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by one with fewer (or equal) MB and higher (or equal) AUROC."""
    front, best = [], -np.inf
    for mb, auc in sorted(points, key=lambda p: (p[0], -p[1])):
        if auc > best:
            front.append((mb, auc))
            best = auc
    return front


def plot_auroc_vs_mb(
    arms: Mapping[str, Sequence], path, metric: str = "auroc", title: str | None = None
) -> Path:
    """Metric vs cumulative MB communicated (log x), one curve per arm, with the Pareto front of
    the arms' final points. arm -> [(cumulative_mb, value)] or dicts with "cum_mb", ``metric``."""
    _require(arms, "arms")
    fig, ax = plt.subplots(figsize=(8.6, 4))
    finals = []
    for i, (arm, points) in enumerate(arms.items()):
        mb, values = _pairs(points, "cum_mb", metric)
        if len(mb) == 0:
            continue
        if (mb <= 0).any():
            raise ValueError(f"arm {arm!r}: cumulative MB must be > 0 for a log axis")
        ax.plot(mb, values, **_style(i), alpha=0.8, label=arm)
        finals.append((float(mb[-1]), float(values[-1])))
    front = pareto_front(finals)
    if front:
        fx, fy = zip(*front, strict=True)
        ax.step(fx, fy, where="post", c="black", ls="--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set(xlabel="cumulative MB communicated", ylabel=metric.upper())
    ax.set_title(title or f"{metric.upper()} vs communication")
    _legend_beside(ax)
    return _save(fig, path, LEGEND_ROOM)


def plot_epsilon_vs_round(
    levels: Mapping[str, Sequence],
    path,
    budget: float = 0.0,
    auroc: Sequence | None = None,
    title: str | None = None,
) -> Path:
    """Cumulative epsilon vs round, one line per DP level (level -> [(round, epsilon)]), with
    the budget ``privacy.epsilon`` dashed when one is set (> 0); with ``auroc`` ([(round,
    value)], the validation AUROC) a panel on its left shows what the privacy bought."""
    _require(levels, "DP levels")
    if auroc:
        fig, (left, ax) = plt.subplots(1, 2, figsize=(9, 3.6))
        rounds, values = _pairs(auroc, "round", "auroc")
        left.plot(rounds, values, marker="o", markersize=3, c="black")
        left.set(xlabel="round", ylabel="validation AUROC", title="Validation AUROC")
        left.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        fig, ax = plt.subplots(figsize=(5, 3.6))
    for level, history in levels.items():
        rounds, eps = _pairs(history, "round", "epsilon")
        ax.plot(rounds, eps, marker="o", markersize=3, label=level)
    if budget > 0:
        ax.axhline(budget, ls="--", c="grey", lw=1, label=f"budget ε = {budget:g}")
    ax.set(xlabel="round", ylabel="cumulative ε", title=title or "Privacy spent (cumulative ε)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _estimate_ci(point) -> tuple[float, float, float, float]:
    """(epsilon, estimate, low, high) from a tuple or a dict; a missing CI bound is NaN."""
    if isinstance(point, Mapping):
        point = (point["epsilon"], point["estimate"], point.get("low"), point.get("high"))
    eps, est, low, high = (np.nan if v is None else float(v) for v in point)
    return eps, est, low, high


def _errorbar(ax, xs, points, **kwargs):
    est = np.array([p[1] for p in points])
    lo = np.array([p[1] - p[2] for p in points])
    hi = np.array([p[3] - p[1] for p in points])
    yerr = np.nan_to_num(np.vstack([lo, hi]), nan=0.0)  # no CI: no bar
    return ax.errorbar(xs, est, yerr=yerr, capsize=3, marker="o", **kwargs)


def utility_vs_epsilon_figure(
    levels: Mapping[str, Sequence],
    no_dp=None,
    metric: str = "test AUROC",
    title: str | None = None,
):
    """The figure of :func:`plot_utility_vs_epsilon` (not saved): axes[0] holds the finite
    epsilons on a log scale, axes[1] the infinite one (no DP) as a separate marker."""
    _require(levels, "DP levels")
    fig, (ax, inf_ax) = plt.subplots(
        1, 2, sharey=True, figsize=(6.5, 4), gridspec_kw={"width_ratios": [5, 1]}
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn: list[tuple] = []
    for i, (level, points) in enumerate(levels.items()):
        pts = [_estimate_ci(p) for p in points]
        finite = sorted(p for p in pts if np.isfinite(p[0]))
        infinite = [p for p in pts if not np.isfinite(p[0])]
        colour = colours[i % len(colours)]
        drawn += pts
        if any(p[0] <= 0 for p in finite):
            raise ValueError(f"level {level!r}: epsilon must be > 0 for a log axis")
        # levels side by side at the same epsilon (a shift in points: the data stay exact)
        shift = (i - (len(levels) - 1) / 2) * 5 / 72
        for a, pts_here in ((ax, finite), (inf_ax, infinite)):
            if pts_here:
                xs = [p[0] if a is ax else 0.0 for p in pts_here]
                moved = a.transData + ScaledTranslation(shift, 0, fig.dpi_scale_trans)
                _errorbar(a, xs, pts_here, color=colour, transform=moved,
                          label=level if a is ax else None, ls="-" if a is ax else "none")  # fmt: skip
    if no_dp is not None:
        ref = _estimate_ci((np.inf, *no_dp) if not isinstance(no_dp, Mapping) else no_dp)
        drawn.append(ref)
        _errorbar(inf_ax, [0.0], [ref], color="black", ls="none", label="no DP")
        ax.axhline(ref[1], c="black", ls=":", lw=1, label=f"no DP ({ref[1]:.3f})")
    ys = [v for p in drawn for v in p[1:] if np.isfinite(v)]
    if ys:  # the shifted artists do not take part in autoscaling
        pad = 0.05 * max(max(ys) - min(ys), 0.1)
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.set_xscale("log")
    ticks = sorted({p[0] for p in drawn if np.isfinite(p[0])})
    if ticks:
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(ticks[0] / 1.5, ticks[-1] * 1.5)
    ax.set(xlabel="ε (log scale)", ylabel=metric, title=title or f"{metric} vs ε")
    inf_ax.set_xlim(-1, 1)
    inf_ax.set_xticks([0.0], ["∞\n(no DP)"])
    inf_ax.tick_params(axis="y", left=False)
    for a in (ax, inf_ax):
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_utility_vs_epsilon(
    levels: Mapping[str, Sequence],
    path,
    no_dp=None,
    metric: str = "test AUROC",
    title: str | None = None,
) -> Path:
    """Utility vs epsilon, one line per DP level, CI bars. levels: level -> [(epsilon,
    estimate, low, high)] or dicts with those keys (low/high None: no bar); epsilon = inf goes
    to a separate marker right of the log axis, as does ``no_dp`` (estimate, low, high)."""
    return _save(utility_vs_epsilon_figure(levels, no_dp, metric, title), path)


def png_to_data_uri(path) -> str:
    """``data:image/png;base64,...`` for embedding a PNG in a self-contained HTML report."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG"):
        raise ValueError(f"{path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def loss_curve(
    history: Sequence[float],
    path,
    title: str,
    xlabel: str = "epoch",
    probe: Mapping | None = None,
) -> Path:
    """Pre-training loss per epoch (or round); with a foundation evaluation (``engine.probe``)
    its linear-probe and kNN test AUROCs, pre-trained vs random init, written under the curve."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8 if probe else 3.2))
    ax.plot(range(1, len(history) + 1), history, marker="o", markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    if probe:
        lines = []
        for name in ("linear", "knn"):
            p = probe.get(name)
            if p:
                d = p["delta"]
                lines.append(
                    f"{name} probe test AUROC {p['pretrained']['test_auroc']:.3f} vs random "
                    f"{p['random']['test_auroc']:.3f} (Δ {d['delta']:+.3f} "
                    f"[{d['low']:+.3f}, {d['high']:+.3f}])"
                )
        fig.text(0.02, 0.02, "\n".join(lines), fontsize=7, family="monospace")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0.16 if probe else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
