"""Baselines with the same training loop: centralized (pooled data) and local-only (each site).

A "round" here is the same local loop the federated clients run, repeated at most ``fl.rounds``
times (``fl.patience`` stops it early on validation, as in a federated run), with the same local
compute per round as a federated round of every site: local-only trains each site for
``train.steps`` (or ``train.epochs``); centralized trains the pooled data for ``train.steps`` ×
the number of sites (or ``train.epochs`` over the pooled data, which is the sites' epochs summed).
Each round's ``examples_seen`` (steps × batch) is in metrics.jsonl.
Outputs have the federated run's layout: config.toml, metrics.jsonl, predictions_*.csv,
summary.json, model.safetensors; the best round is chosen on validation.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fedprostate.config import RunConfig
from fedprostate.data.cache import CropDataset
from fedprostate.engine import setup
from fedprostate.engine.loop import (
    headline_mask,
    lr_scale,
    score_dataset,
    score_metrics,
    train_local,
)
from fedprostate.engine.selection import BestOnValidation
from fedprostate.eval.calibration import calibration_report
from fedprostate.eval.metrics import headline
from fedprostate.records import predictions
from fedprostate.records.run_folder import RunRecorder


class _Pooled(CropDataset):
    """Several clients' rows as one dataset (keeps ``.rows`` for labels and predictions)."""

    def __init__(self, cache: str, parts: list[CropDataset]):
        super().__init__(cache, [r for p in parts for r in p.rows])


def _fit(
    cfg: RunConfig, name: str, train_ds, sets: dict[str, CropDataset], recorder: RunRecorder | None
) -> dict:
    """Train a fresh model for fl.rounds rounds; score ``sets`` each round; keep the best on val.

    A validation split of one class (a small site in a local-only run) cannot rank rounds: the
    last round is kept then, and ``chosen_on`` says so.
    """
    one_class = len(set(sets["val"].labels[headline_mask(sets["val"])].tolist())) < 2
    bundle = setup.build_model(cfg, fresh=True)
    model = bundle.ft.model
    best: dict | None = None
    chooser = BestOnValidation(cfg.fl.patience)
    for r in range(1, cfg.fl.rounds + 1):
        result = train_local(
            model,
            train_ds,
            cfg.train,
            seed=setup.client_seed(cfg, r, name),
            teacher=setup.teacher_model(cfg),
            kd_temperature=cfg.distill.temperature,
            kd_alpha=cfg.distill.alpha,
            lr_scale=lr_scale(cfg.train, r, cfg.fl.rounds),
        )
        entry: dict = {
            "round": r,
            "client": name,
            "train_loss": result.loss,
            "examples_seen": result.steps * cfg.train.batch_size,
        }
        preds = {}
        for split, ds in sets.items():
            entry[split], scores = score_dataset(model, ds)
            preds[split] = predictions.from_index(ds.rows, scores, r)
        if recorder is not None:
            recorder.append_round(entry)
        if chooser.offer(r, entry["val"]["auroc"]) or one_class:
            best = {**entry, "predictions": preds, "arrays": setup.communicated_numpy(bundle.ft)}
        last = {**entry, "predictions": preds}
        if chooser.should_stop and not one_class:
            break
    chosen_on = "last round (validation split of one class)" if one_class else "validation"
    return {"best": best, "last": last, "bundle": bundle, "chosen_on": chosen_on, "rounds_run": r}


def _prepare(cfg: RunConfig, out: str | Path) -> tuple[RunConfig, RunRecorder]:
    cfg = setup.prepare_run_config(cfg, out)
    setup.check_run_data(cfg)
    setup.check_tracking(cfg)
    recorder = RunRecorder(cfg.out)
    recorder.metrics_path.unlink(missing_ok=True)
    setup.start_tracking(recorder, cfg)
    recorder.write_config(cfg.to_toml(), cfg.to_flat())
    return cfg, recorder


def centralize(cfg: RunConfig, out: str | Path) -> dict:
    """Pool every client's training data (the upper bound a federation tries to reach)."""
    t0 = time.time()
    cfg, recorder = _prepare(cfg, out)
    names = setup.client_names(cfg)
    train = _Pooled(cfg.data.cache, [setup.client_dataset(cfg, n, "train") for n in names])
    sets = {"val": setup.pooled_dataset(cfg, "val"), "test": setup.pooled_dataset(cfg, "test")}
    train_cfg = equal_compute(cfg, len(names))
    fit = _fit(train_cfg, "pooled", train, sets, recorder)
    for tag in ("best", "last"):
        for split in sets:
            recorder.write_predictions(split, tag, fit[tag]["predictions"][split])
    recorder.write_model(fit["best"]["arrays"])
    summary = _summary(
        cfg, "centralized", fit["best"], fit["last"], fit["bundle"], time.time() - t0
    )
    summary["per_site_test_auroc"] = _per_site(fit["best"]["predictions"]["test"])
    summary["train_steps_per_round"] = (
        train_cfg.train.steps if train_cfg.train.epochs == 0 else None
    )
    recorder.write_summary(summary)
    return summary


def equal_compute(cfg: RunConfig, n_sites: int) -> RunConfig:
    """Centralized training with a federated round's compute: ``train.steps`` × sites per round
    (epochs over the pooled data already equal the sites' epochs summed)."""
    if cfg.train.epochs > 0:
        return cfg
    return cfg.replace(**{"train.steps": cfg.train.steps * n_sites})


def local_only(cfg: RunConfig, out: str | Path) -> dict:
    """Each site trains alone; scored on its own test split and on the pooled test split."""
    t0 = time.time()
    cfg, recorder = _prepare(cfg, out)
    pooled_test = setup.pooled_dataset(cfg, "test")
    per_site, own_preds, own_val_preds = {}, [], []
    for name in setup.client_names(cfg):
        own = {
            "val": setup.client_dataset(cfg, name, "val"),
            "test": setup.client_dataset(cfg, name, "test"),
        }
        fit = _fit(
            cfg,
            name,
            setup.client_dataset(cfg, name, "train"),
            {**own, "pooled_test": pooled_test},
            recorder,
        )
        best = fit["best"]
        per_site[name] = {
            "best_round": best["round"],
            "best_round_chosen_on": fit["chosen_on"],
            "own_val_auroc": best["val"]["auroc"],
            "own_test_auroc": best["test"]["auroc"],
            "pooled_test_auroc": best["pooled_test"]["auroc"],
        }
        own_preds += best["predictions"]["test"]
        own_val_preds += best["predictions"]["val"]
    recorder.write_predictions("test", "best", own_preds)
    recorder.write_predictions("val", "best", own_val_preds)
    own, own_val = _headline_metrics(own_preds), _headline_metrics(own_val_preds)
    pooled = [
        v["pooled_test_auroc"] for v in per_site.values() if np.isfinite(v["pooled_test_auroc"])
    ]
    summary = {
        **setup.summary_head(cfg, "local", None, time.time() - t0),
        "per_site": per_site,
        # every site's own validation findings at its validation-chosen round: what the
        # study chooses the local-only arm's learning rate by (never a test number)
        "val_auroc": own_val["auroc"],
        "test_auroc": own["auroc"],
        "test_ap": own["ap"],
        "mean_pooled_test_auroc": float(np.mean(pooled)) if pooled else float("nan"),
        "uplink_mb_per_client_round": 0.0,
    }
    recorder.write_summary(summary)
    return summary


def _summary(
    cfg: RunConfig, kind: str, best: dict, last: dict, bundle: setup.ModelBundle, wall_s: float
) -> dict:
    return {
        **setup.summary_head(cfg, kind, bundle, wall_s),
        "best_round": best["round"],
        "val_auroc": best["val"]["auroc"],
        "test_auroc": best["test"]["auroc"],
        "test_ap": best["test"]["ap"],
        "last_round_test_auroc": last["test"]["auroc"],
        "calibration": calibration_report(best["predictions"]["val"], best["predictions"]["test"]),
        "uplink_mb_per_client_round": 0.0,
    }


def _headline_metrics(rows: list[dict]) -> dict[str, float]:
    scored = headline(rows)
    return score_metrics(
        np.array([int(r["label"]) for r in scored]), np.array([float(r["score"]) for r in scored])
    )


def _per_site(rows: list[dict]) -> dict[str, float]:
    out = {}
    rows = headline(rows)
    for site in sorted({r["site"] for r in rows}):
        sub = [r for r in rows if r["site"] == site]
        m = score_metrics(
            np.array([int(r["label"]) for r in sub]), np.array([r["score"] for r in sub])
        )
        out[site] = m["auroc"]
    return out
