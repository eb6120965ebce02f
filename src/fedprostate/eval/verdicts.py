"""Verdict rules: what a paired comparison may conclude, and when it may conclude anything.

One rule for every test. A comparison is Δ = AUROC_B − AUROC_A (B the arm the claim favours) with
a pre-registered threshold ``t`` on the AUROC scale:

- superiority ("B beats A"):            t = +margin_superiority (0 unless stated);
- non-inferiority ("B is not worse"):   t = −margin_noninferiority (0.02 in every study config).

With the two-sided (1 − α) percentile CI of the paired bootstrap:

- **reproduced**      when CI low  > t (B is better than t: p_for < α);
- **not reproduced**  when CI high < t (B is worse than t: p_against < α);
- **inconclusive**    otherwise, and whenever the evidence needed for a verdict is missing:
  no CI (too few cases), a zero-variance bootstrap (every Δ* identical — e.g. two arms that rank
  every resample the same give CI [0, 0] at any sample size; that shows nothing), fewer test
  patients or positives than pre-registered, or a reference arm whose AUROC CI does not lie
  above 0.5 (the study gates on it before any verdict).

p-values of the percentile bootstrap at the threshold, doubled one-sided so that p < α exactly
when the two-sided (1 − α) interval excludes t (up to the +1 correction):
p_for = min(1, 2 (#{Δ* ≤ t} + 1) / (B + 1)), p_against = min(1, 2 (#{Δ* ≥ t} + 1) / (B + 1)).

**Multiplicity**: Holm's step-down procedure over a pre-registered family (``holm``): a decided
verdict stays decided only if its Holm-adjusted p-value (p_for for "reproduced", p_against for
"not reproduced") is below α, else it becomes inconclusive. The CI shown is the unadjusted one.

**Claims of several comparisons** (intersection–union, ``combine``): "Swin beats ResNet *and*
ViT" is reproduced only if every comparison is reproduced (each at level α: an intersection–union
test needs no adjustment within the claim), not reproduced if at least one comparison is decided
against the claim, else inconclusive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VERDICTS = ("reproduced", "not reproduced", "inconclusive")
CLAIMS = ("superior", "noninferior")


def threshold(claim: str, margin: float) -> float:
    """The AUROC difference a claim's test is decided against (see the module docstring)."""
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; expected one of {CLAIMS}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (an AUROC difference), got {margin}")
    return margin if claim == "superior" else -margin


def bootstrap_p(samples, t: float) -> tuple[float | None, float | None]:
    """(p_for, p_against) of Δ > t and Δ < t from bootstrap samples (NaN ignored)."""
    v = np.asarray(samples, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return None, None
    n = len(v) + 1
    p_for = min(1.0, 2 * (int((v <= t).sum()) + 1) / n)
    p_against = min(1.0, 2 * (int((v >= t).sum()) + 1) / n)
    return p_for, p_against


def zero_variance(samples) -> bool:
    """True when every finite bootstrap sample is the same number (or there is none)."""
    v = np.asarray(samples, dtype=float)
    v = v[np.isfinite(v)]
    return len(v) == 0 or float(v.max() - v.min()) == 0.0


def noninferior(delta_ci_low: float | None, margin: float) -> bool:
    """B is non-inferior to A when the CI lower bound of Δ = B − A exceeds −margin."""
    return delta_ci_low is not None and delta_ci_low > threshold("noninferior", margin)


def verdict(
    ci_low: float | None,
    ci_high: float | None,
    *,
    claim: str = "superior",
    margin: float = 0.0,
    flat: bool = False,
) -> str:
    """Verdict of one comparison from its two-sided CI (``flat``: zero-variance bootstrap)."""
    t = threshold(claim, margin)
    if ci_low is None or ci_high is None or flat:
        return "inconclusive"
    if ci_low > ci_high:
        raise ValueError(f"CI low {ci_low} above CI high {ci_high}")
    if ci_low > t:
        return "reproduced"
    return "not reproduced" if ci_high < t else "inconclusive"


def verdict_from_comparison(comparison: dict, *, claim: str, alpha: float, margin: float) -> str:
    """Verdict from ``compare_models`` output, using the paired patient bootstrap (primary test)."""
    if not 0 < alpha < 1:
        raise ValueError(f"need 0 < alpha < 1, got {alpha}")
    boot = comparison["bootstrap"] if "bootstrap" in comparison else comparison
    if abs(boot["level"] - (1 - alpha)) > 1e-9:
        raise ValueError(
            f"CI level {boot['level']} does not match the pre-registered alpha {alpha}"
        )
    return verdict(
        boot["low"], boot["high"], claim=claim, margin=margin, flat=bool(boot.get("flat"))
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (None stays None and does not count in the family)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def apply_holm(results: list[dict], alpha: float) -> None:
    """Holm over one family of comparison results, in place.

    Each result holds ``verdict`` and, where a test ran, ``p_for``/``p_against``. Adds
    ``p_for_holm``/``p_against_holm`` and turns a decided verdict whose adjusted p-value is not
    below α into "inconclusive" (with ``reason``). Results without a test do not count."""
    for key in ("p_for", "p_against"):
        adjusted = holm([r.get(key) for r in results])
        for r, p in zip(results, adjusted, strict=True):
            r[f"{key}_holm"] = p
    family = sum(r.get("p_for") is not None for r in results)
    for r in results:
        key = {"reproduced": "p_for_holm", "not reproduced": "p_against_holm"}.get(r["verdict"])
        if key is None:
            continue
        p = r.get(key)
        if p is None or p >= alpha:
            r["verdict_unadjusted"] = r["verdict"]
            r["verdict"] = "inconclusive"
            r["reason"] = f"not significant after Holm over {family} comparisons"


def combine(verdicts: Sequence[str]) -> str:
    """Intersection–union: reproduced iff all are; not reproduced iff any is; else inconclusive."""
    if verdicts and all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if any(v == "not reproduced" for v in verdicts):
        return "not reproduced"
    return "inconclusive"


def size_gate(
    n_patients: int, n_positives: int, min_patients: int, min_positives: int
) -> str | None:
    """Why a test set is too small for any verdict (pre-registered minimum), or None."""
    if n_patients < min_patients:
        return f"{n_patients} test patients, fewer than the pre-registered {min_patients}"
    if n_positives < min_positives:
        return f"{n_positives} positives, fewer than the pre-registered {min_positives}"
    return None
