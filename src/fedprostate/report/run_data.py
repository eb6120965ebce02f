"""Read one run folder (federate / centralize / local) and score it with its baselines.

Prediction rows are ``fedprostate.records.predictions``'. The crop cache named in the run's config
adds each finding's case label, PI-RADS and mean ADC (index.csv) and every patient of the split
with PSA density, findings or not (patients.csv): the baselines that need no deep learning —
the radiologist's PI-RADS and the mean-ADC rule on the same findings, PSA density per patient.
Rows and index rows are joined on (patient, ``predictions.finding_key``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from fedprostate.data.cache import load_index, load_patients
from fedprostate.eval.baselines import adc_rule_predictions, median_psad, psad_predictions
from fedprostate.eval.compare import compare_models
from fedprostate.eval.metrics import evaluate_predictions, headline, patient_key, patient_rows
from fedprostate.records import predictions


def _key(row: dict) -> tuple[str, str]:
    return patient_key(row), predictions.finding_key(row)


@dataclass
class RunData:
    run_dir: Path
    config: dict
    summary: dict
    rounds: list[dict]
    test: list[dict]
    val: list[dict]
    index: list[dict] = field(default_factory=list)  # cache rows of the scored test findings
    train_index: list[dict] = field(default_factory=list)  # cache rows of the training split
    val_index: list[dict] = field(default_factory=list)  # cache rows of the validation split
    patients: dict[str, list[dict]] = field(default_factory=dict)  # split → patients.csv rows

    @property
    def name(self) -> str:
        return self.run_dir.name


def load_run(run_dir: str | Path, cache: str | Path | None = None) -> RunData:
    """Load a finished run. ``cache`` overrides the crop cache named in its config.toml."""
    import tomllib

    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{run_dir}: no summary.json (not a finished run folder)")
    config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    rounds = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rounds = [
            json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()
        ]
    test = predictions.read(run_dir / "predictions_test_best.csv")
    val_path = run_dir / "predictions_val_best.csv"
    val = predictions.read(val_path) if val_path.exists() else []
    data = RunData(run_dir, config, summary, rounds, test, val)
    cache = Path(cache) if cache else Path(config.get("data", {}).get("cache", ""))
    if cache and (cache / "index.csv").exists():
        attach_index(data, cache)
    return data


def attach_index(data: RunData, cache: Path) -> None:
    """Join case labels onto the predictions and keep the index rows of the scored findings."""

    by_key = {_key(r): r for r in load_index(cache)}
    patients = load_patients(cache)
    data.patients = {s: [p for p in patients if p["split"] == s] for s in ("train", "val", "test")}
    for rows in (data.test, data.val):
        for r in rows:
            match = by_key.get(_key(r))
            if match is not None and match.get("case_label") is not None:
                r["case_label"] = int(match["case_label"])
    data.index = [by_key[_key(r)] for r in data.test if _key(r) in by_key]
    data.train_index = [r for r in by_key.values() if r["split"] == "train"]
    data.val_index = [r for r in by_key.values() if r["split"] == "val"]


def psad_baseline_rows(data: RunData, index: list[dict] | None = None) -> list[dict] | None:
    """Patient-level PSA-density rows for every test patient (or ``index`` rows), with or
    without findings, median-imputed from the training split."""
    index = (data.patients.get("test") or data.index) if index is None else index
    if not index or all(r.get("psad") is None for r in index):
        return None
    try:
        impute = median_psad(data.train_index or index, split=None)
    except ValueError:
        return None
    return psad_predictions(index, split=None, impute=impute)


def adc_baseline_rows(data: RunData, index: list[dict] | None = None) -> list[dict] | None:
    """Lesion-level mean-ADC rows for the scored test findings (or ``index`` rows)."""
    index = headline(data.index if index is None else index)
    if not index or any(
        r.get("adc_mean") is None or not math.isfinite(r["adc_mean"]) for r in index
    ):
        return None
    return adc_rule_predictions(index, split=None)


def pirads_baseline_rows(data: RunData, index: list[dict] | None = None) -> list[dict] | None:
    """The radiologist: lesion-level rows scored by PI-RADS, when every scored finding has one
    (reader findings; proposals have none, so a proposal run has no PI-RADS baseline)."""
    index = headline(data.index if index is None else index)
    if not index or any(r.get("pirads") is None for r in index):
        return None
    return predictions.from_index(index, [float(r["pirads"]) for r in index])


def evaluate_run(data: RunData, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Model metrics (CIs), baselines, and how much the model adds over each baseline."""
    patients = data.patients.get("test")
    model = evaluate_predictions(
        data.test, n_boot=n_boot, seed=seed, val_rows=data.val or None, level=level,
        patients=patients,
    )  # fmt: skip
    out: dict = {"model": model, "baselines": {}, "added_value": {}}
    lesion_model = headline(data.test)
    rules = {
        "PI-RADS (radiologist)": pirads_baseline_rows,
        "mean-ADC rule": adc_baseline_rows,
    }
    for name, build in rules.items():
        rows = build(data)
        if rows is None or len(rows) != len(lesion_model):
            continue
        out["baselines"][name] = evaluate_predictions(
            rows, n_boot=n_boot, seed=seed, val_rows=build(data, data.val_index),
            patients=patients,
        )  # fmt: skip
        _add_comparison(out, f"{name} (lesion level)", rows, lesion_model, n_boot, seed, level)
    psad = psad_baseline_rows(data)
    if psad is not None:
        out["baselines"]["PSA density"] = evaluate_predictions(
            psad, n_boot=n_boot, seed=seed,
            val_rows=psad_baseline_rows(data, data.patients.get("val") or data.val_index),
        )  # fmt: skip
        per_patient = patient_rows(data.test, patients)
        keys = {patient_key(r) for r in psad}
        per_patient = [r for r in per_patient if patient_key(r) in keys]
        _add_comparison(out, "PSA density (patient level)", psad, per_patient, n_boot, seed, level)
    for result in out["baselines"].values():
        result["lesion"]["calibration"] = None  # PI-RADS, -ADC, PSAD: scores, not probabilities
    return out


def _add_comparison(out: dict, name: str, baseline, model, n_boot, seed, level) -> None:
    """Model − baseline paired test; skipped (with the reason) when a class is missing."""
    try:
        out["added_value"][name] = compare_models(
            baseline, model, n_boot=n_boot, seed=seed, level=level
        )
    except ValueError as exc:
        out.setdefault("skipped", {})[name] = str(exc)


def round_history(rounds: list[dict], split: str = "val") -> list[tuple[int, float]]:
    """(round, AUROC) of the server-side ``split`` evaluation, skipping undefined values."""
    out = []
    for r in rounds:
        value = (r.get(split) or {}).get("auroc")
        if value is not None and math.isfinite(value):
            out.append((int(r["round"]), float(value)))
    return out


def cumulative_mb(rounds: list[dict]) -> list[tuple[float, float]]:
    """(cumulative MB up + down over all clients, evaluation broadcasts included, validation
    AUROC) after each round."""
    total, out = 0.0, []
    for r in rounds:
        clients = r.get("clients") or []
        total += sum(c.get("bytes_up", 0) + c.get("bytes_down", 0) for c in clients) / 1e6
        total += r.get("bytes_down_evaluate", 0) / 1e6
        value = (r.get("val") or {}).get("auroc")
        if clients and value is not None and math.isfinite(value) and total > 0:
            out.append((total, float(value)))
    return out
