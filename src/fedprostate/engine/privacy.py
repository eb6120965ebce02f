"""One privacy accountant for both DP levels (Opacus' RDP or PRV accountant), as plain functions.

Two repeated Gaussian mechanisms are accounted (docs/readme/privacy.md):

* **client level** (``privacy.client``): once per round the server releases the mean of the
  sites' clipped updates plus Gaussian noise of std ``z * C / m`` (m replies), i.e. the sum with
  noise ``z * C`` where one site moves the sum by at most C. Every site takes part in every
  round (no sampling amplification is claimed: Flower samples a fixed number of sites, not
  Poisson), so round r composes r Gaussian mechanisms with noise multiplier z, sample rate 1.
  With ``local`` each site adds the noise itself; its sensitivity is then 2C (the update can
  move anywhere in the C-ball) and the noise std ``z * 2C`` gives the same multiplier z.
  The unit is the whole site, so the guarantee holds for every patient of it too.
* **patient level** (``privacy.dp_sgd``): DP-SGD inside a site; each step samples every
  patient independently with probability q = batch_size / training crops of the site (Poisson),
  clips each sampled patient's summed gradient to C and adds N(0, (sigma C)^2). Round r of a
  site with s steps per round composes r * s subsampled Gaussian mechanisms (counting every
  round, as if the site trained in all of them: an upper bound).

epsilon for a given delta comes from Opacus' accountant; the federation's reported patient
epsilon is the largest over sites (a patient is protected by their own site's mechanism).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from fedprostate.config import ConfigError, PrivacyConfig, RunConfig, TrainConfig

INSTALL_HINT = "differential privacy needs Opacus: pip install -e '.[privacy]'"


class PrivacyBudgetError(ValueError):
    """The configured privacy budget (privacy.epsilon) would be exceeded."""


def _accountant(kind: str):
    try:
        from opacus.accountants import PRVAccountant, RDPAccountant
    except ImportError as exc:  # the [privacy] extra
        raise ImportError(INSTALL_HINT) from exc
    return {"rdp": RDPAccountant, "prv": PRVAccountant}[kind]()


@lru_cache(maxsize=4096)
def epsilon(noise: float, sample_rate: float, steps: int, delta: float, kind: str = "rdp") -> float:
    """epsilon after ``steps`` (subsampled) Gaussian mechanisms; inf without noise, 0 without steps."""
    if steps <= 0:
        return 0.0
    if noise <= 0:
        return math.inf
    acc = _accountant(kind)
    acc.history = [(float(noise), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=delta))


def noise_for(
    target_epsilon: float, sample_rate: float, steps: int, delta: float, kind: str = "rdp"
) -> float:
    """The smallest noise multiplier whose epsilon after ``steps`` is within ``target_epsilon``
    (Opacus' ``get_noise_multiplier``)."""
    try:
        from opacus.accountants.utils import get_noise_multiplier
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=kind,
            epsilon_tolerance=0.005,
        )
    )


def dp_sgd_sample_rate(train: TrainConfig, n_train: int) -> float:
    """Per-step Poisson probability of each patient: batch_size / the site's training crops
    (so a batch holds batch_size crops on average)."""
    return min(1.0, train.batch_size / max(1, n_train))


def dp_sgd_steps(train: TrainConfig, sample_rate: float) -> int:
    """DP-SGD steps per round: ``train.steps``, or ``train.epochs`` x 1/q when epochs are set."""
    if train.epochs > 0:
        return train.epochs * max(1, round(1.0 / sample_rate))
    return train.steps


@dataclass(frozen=True)
class LevelEpsilon:
    level: str  # "client" | "patient"
    round: float  # epsilon of one round's mechanism alone
    cumulative: float  # after all rounds so far


def client_epsilon(p: PrivacyConfig, rounds: int, delta: float) -> LevelEpsilon:
    one = epsilon(p.noise_multiplier, 1.0, 1, delta, p.accountant)
    return LevelEpsilon(
        "client", one, epsilon(p.noise_multiplier, 1.0, rounds, delta, p.accountant)
    )


def patient_epsilon(cfg: RunConfig, n_train: int, rounds: int, delta: float) -> LevelEpsilon:
    """One site's patient-level epsilon after ``rounds`` rounds of DP-SGD."""
    p = cfg.privacy
    q = dp_sgd_sample_rate(cfg.train, n_train)
    steps = dp_sgd_steps(cfg.train, q)
    one = epsilon(p.dp_sgd_noise, q, steps, delta, p.accountant)
    return LevelEpsilon(
        "patient", one, epsilon(p.dp_sgd_noise, q, rounds * steps, delta, p.accountant)
    )


def round_report(cfg: RunConfig, train_sizes: dict[str, int], server_round: int) -> dict:
    """The ``privacy`` entry of a round's metrics line (and, for the last round, the summary).

    ``train_sizes``: training crops per site (the registry's sizes; the sites use the same).
    """
    p = cfg.privacy
    delta = p.delta
    out: dict = {"delta": delta, "accountant": p.accountant, "round": server_round}
    if p.client_level:
        c = client_epsilon(p, server_round, delta)
        out["client"] = {
            "mechanism": p.client,
            "noise_multiplier": p.noise_multiplier,
            "epsilon_round": c.round,
            "epsilon": c.cumulative,
            "unit": "site (implies every patient of it)",
        }
    if p.dp_sgd and train_sizes:
        per_site = {
            s: patient_epsilon(cfg, n, server_round, delta) for s, n in sorted(train_sizes.items())
        }
        worst = max(per_site, key=lambda s: per_site[s].cumulative)
        out["patient"] = {
            "noise_multiplier": p.dp_sgd_noise,
            "clip": p.dp_sgd_clip,
            "epsilon_round": per_site[worst].round,
            "epsilon": per_site[worst].cumulative,
            "worst_site": worst,
            "per_site": {s: e.cumulative for s, e in per_site.items()},
            "unit": "patient (all crops of a patient sampled and clipped together)",
        }
    levels = [out[k]["epsilon"] for k in ("client", "patient") if k in out]
    # A patient is protected by every enabled level at once: the released model is a
    # post-processing of each mechanism, so the smaller epsilon bounds their guarantee.
    out["epsilon_patient_bound"] = min(levels) if levels else math.inf
    return out


def budget_problem(cfg: RunConfig, report: dict) -> str | None:
    """Why ``report`` (a round_report) exceeds ``privacy.epsilon`` (every level must fit)."""
    budget = cfg.privacy.epsilon
    if budget <= 0:
        return None
    for level, key in (("client", "privacy.noise_multiplier"), ("patient", "privacy.dp_sgd_noise")):
        if level in report and report[level]["epsilon"] > budget:
            return (
                f"{level}-level epsilon {report[level]['epsilon']:.3g} after round "
                f"{report['round']} exceeds privacy.epsilon = {budget:g} (delta "
                f"{report['delta']:.3g}); raise {key}"
            )
    return None


def plan(cfg: RunConfig, train_sizes: dict[str, int]) -> dict:
    """epsilon after all ``fl.rounds``, and the noise each enabled level would need to fit the
    budget: a run is refused before it starts when the plan exceeds ``privacy.epsilon``."""
    p, budget = cfg.privacy, cfg.privacy.epsilon
    if p.delta <= 0:
        raise ConfigError(
            "privacy.delta = 0 (1 / training patients) is resolved from the crop cache in "
            "simulation; a deployment must set it (e.g. privacy.delta = 1e-4)"
        )
    report = round_report(cfg, train_sizes, cfg.fl.rounds)
    if budget > 0:
        if "client" in report:
            report["client"]["noise_for_budget"] = noise_for(
                budget, 1.0, cfg.fl.rounds, p.delta, p.accountant
            )
        if "patient" in report:
            n = train_sizes[report["patient"]["worst_site"]]
            q = dp_sgd_sample_rate(cfg.train, n)
            steps = cfg.fl.rounds * dp_sgd_steps(cfg.train, q)
            report["patient"]["noise_for_budget"] = noise_for(
                budget, q, steps, p.delta, p.accountant
            )
    return report


def check_plan(cfg: RunConfig, train_sizes: dict[str, int]) -> dict:
    """The plan, or :class:`PrivacyBudgetError` naming the key and the noise that would fit."""
    report = plan(cfg, train_sizes)
    why = budget_problem(cfg, report)
    if why:
        level = "client" if "client-level" in why else "patient"
        need = report[level].get("noise_for_budget")
        raise PrivacyBudgetError(f"{why} to at least {need:.3f}" if need else why)
    return report


def group_privacy(eps: float, delta: float, k: int) -> tuple[float, float]:
    """(epsilon, delta) for a group of k records from a per-record (eps, delta) guarantee:
    (k eps, k e^((k-1) eps) delta). What a per-crop guarantee would give a patient with k crops
    (this project samples and clips per patient instead; docs/readme/privacy.md)."""
    return k * eps, k * math.exp((k - 1) * eps) * delta
