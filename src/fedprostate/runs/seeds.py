"""The same run for several training seeds, and the spread over seeds with a t-interval.

PI-CAI practice is to report a model over 5-10 training runs: ``run_seeds`` runs one kind of run
(federated, centralized) once per seed into ``OUT/seed_<s>`` (a finished seed is not rerun, so a
killed sweep continues), then writes ``OUT/seeds.json``: per metric the mean, the standard
deviation and the Student-t 95 % interval over seeds (``eval.bootstrap.seed_ci``). Metrics are
the summary's (``val_auroc``, ``test_auroc``, ``test_ap``) and the PI-CAI ones of each seed's
``predictions_test_best.csv`` (``case_auroc``, ``finding_level_ap``, ``ranking_score``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fedprostate.config import RunConfig
from fedprostate.eval.bootstrap import seed_ci
from fedprostate.eval.picai import picai_metrics
from fedprostate.records import predictions
from fedprostate.runs.federated import federate
from fedprostate.runs.pooled import centralize, local_only

RUNNERS: dict[str, Callable[..., dict]] = {
    "federated": federate,
    "centralized": centralize,
    "local": local_only,
}
SUMMARY_METRICS = ("val_auroc", "test_auroc", "test_ap", "last_round_test_auroc")
PICAI_METRICS = ("case_auroc", "finding_level_ap", "ranking_score")
SEEDS_JSON = "seeds.json"


def seed_folder(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


def _finished(run: Path) -> dict | None:
    path = run / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    return summary if summary.get("status") == "finished" else None


def seed_metrics(run: Path, summary: dict) -> dict[str, float | None]:
    """The numbers of one seed's run that the spread is computed over."""
    out = {k: summary.get(k) for k in SUMMARY_METRICS}
    test = run / "predictions_test_best.csv"
    if test.is_file():
        m = picai_metrics(predictions.read(test), n_boot=0)
        out.update({k: m[k]["estimate"] for k in PICAI_METRICS})
    return out


def summarize_seeds(out: str | Path, seeds: list[int], kind: str = "") -> dict:
    """``OUT/seeds.json`` from the seeds' finished run folders (returned as well)."""
    out = Path(out)
    per_seed: dict[str, dict] = {}
    for seed in seeds:
        run = seed_folder(out, seed)
        summary = _finished(run)
        if summary is None:
            raise FileNotFoundError(f"{run}: no finished run for seed {seed}")
        per_seed[str(seed)] = seed_metrics(run, summary)
    names = [*SUMMARY_METRICS, *PICAI_METRICS]
    result = {
        "kind": kind,
        "seeds": list(seeds),
        "runs": {str(s): seed_folder(out, s).name for s in seeds},
        "per_seed": per_seed,
        "metrics": {n: seed_ci([m.get(n) for m in per_seed.values()]) for n in names},
        "interval": "mean ± t(0.975, n-1) · sd / √n over seeds (eval.bootstrap.seed_ci)",
    }
    (out / SEEDS_JSON).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def run_seeds(kind: str, cfg: RunConfig, seeds: list[int], out: str | Path) -> dict:
    """Run ``kind`` once per seed (``cfg`` with ``seed`` replaced); returns seeds.json."""
    if kind not in RUNNERS:
        raise ValueError(f"unknown run kind {kind!r}; choose one of {', '.join(RUNNERS)}")
    if not seeds:
        raise ValueError("no seeds given")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        run = seed_folder(out, seed)
        if _finished(run) is None:
            RUNNERS[kind](cfg.replace(seed=seed), run)
    return summarize_seeds(out, seeds, kind)
