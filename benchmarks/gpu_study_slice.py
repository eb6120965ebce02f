"""One slice of the study's reference arm on the lent GPU, without Ray: the study-full estimate.

    python benchmarks/gpu_study_slice.py [--config configs/study-full.toml] [--rounds 2]
        [--sites 17] [--patients 2040] [--device cuda] [--json out.json]

Flower's Ray simulation cannot run on the lent accelerator (Ray's wheel exceeds what travels to
it), so this runs the federated rounds in one process: every site trains with the project's own
loop (``engine.loop.train_local``, the same seed per site and round as a Flower client, the
reference arm's config from the study file), then the server step is FedAdam written out as in
Flower 1.42's ``FedAdam.aggregate_train`` (weighted mean of the updates, first and second moments,
bias-corrected step). It measures wall seconds per round (training every site + scoring the
pooled validation split) and projects the study: seconds per round × the cap of rounds × the
number of cells of the study file (every cell costed like the reference arm: a stated
simplification; full fine-tuning and organ crops cost more, the stopping rule less).
On CPU with tiny settings it runs in well under a minute (the test does that); no GPU figure comes
from such a run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedprostate.config import RunConfig
from fedprostate.data.prepare import prepare
from fedprostate.data.synth.federation import synthesize
from fedprostate.engine import setup
from fedprostate.engine.loop import lr_scale, score_dataset, train_local
from fedprostate.study.cells import build_cells, seed_cells
from fedprostate.study.config import StudyConfig
from fedprostate.study.runner import planned_paths


def fedadam_step(
    cfg: RunConfig, current: dict, updates: list, weights: list, state: dict, rnd: int
):
    """Flower 1.42 FedAdam: Δ = weighted mean − current; m, v moments; bias-corrected step."""
    total = float(sum(weights))
    mean = {
        k: sum(w * u[k] for u, w in zip(updates, weights, strict=True)) / total for k in current
    }
    delta = {k: mean[k] - current[k] for k in current}
    b1, b2 = cfg.fl.beta_1, cfg.fl.beta_2
    m = state.setdefault("m", {k: np.zeros_like(v) for k, v in current.items()})
    v = state.setdefault("v", {k: np.zeros_like(x) for k, x in current.items()})
    for k in current:
        m[k] = b1 * m[k] + (1 - b1) * delta[k]
        v[k] = b2 * v[k] + (1 - b2) * delta[k] ** 2
    eta = cfg.fl.server_lr * np.sqrt(1 - b2 ** (rnd + 1.0)) / (1 - b1 ** (rnd + 1.0))
    return {
        k: (current[k] + eta * m[k] / (np.sqrt(v[k]) + cfg.fl.tau)).astype(np.float32)
        for k in current
    }


def run_slice(cfg: RunConfig, rounds: int, device: str) -> list[dict]:
    """``rounds`` federated rounds of ``cfg`` in one process; per round: seconds, val AUROC."""
    names = setup.client_names(cfg)
    bundle = setup.build_model(cfg, fresh=True)
    current = setup.communicated_numpy(bundle.ft)
    val = setup.pooled_dataset(cfg, "val")
    state: dict = {}
    out = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        updates, weights = [], []
        for name in names:
            bundle = setup.build_model(cfg, fresh=True)
            setup.load_communicated(bundle.ft, current)
            anchors = {k: torch.from_numpy(v) for k, v in current.items()}
            result = train_local(
                bundle.ft.model,
                setup.client_dataset(cfg, name, "train"),
                cfg.train,
                seed=setup.client_seed(cfg, rnd, name),
                global_params=anchors,
                lr_scale=lr_scale(cfg.train, rnd, cfg.fl.rounds),
            )
            updates.append(setup.communicated_numpy(bundle.ft))
            weights.append(result.num_examples)
        current = fedadam_step(cfg, current, updates, weights, state, rnd)
        setup.load_communicated(bundle.ft, current)
        metrics, _ = score_dataset(bundle.ft.model, val, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out.append(
            {"round": rnd, "seconds": time.perf_counter() - t0, "val_auroc": metrics["auroc"]}
        )
    return out


def _refuse(reason: str) -> None:
    """Bad input: one line on stderr, exit 2."""
    print(f"gpu_study_slice: {reason}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/study-full.toml")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sites", type=int, default=0, help="default: the study file's")
    ap.add_argument("--patients", type=int, default=0, help="default: the study file's")
    ap.add_argument("--arch", default="", help="default: the reference arm's")
    ap.add_argument("--crop", type=int, default=0, help="default: the study file's")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--work", type=Path, default=None, help="data folder (default: temp)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    try:
        study = StudyConfig.load(args.config)
    except (OSError, ValueError) as exc:
        _refuse(f"{args.config}: {exc}")
    if args.rounds < 1:
        _refuse("--rounds must be >= 1")
    sites = args.sites or study.data.sites
    patients = args.patients or study.data.patients
    crop = args.crop or study.data.crop
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_study_slice_"))
    raw, cache = work / "raw", work / "cache"
    t0 = time.perf_counter()
    if not (cache / "index.csv").exists():
        synthesize(raw, sites=sites, patients=patients, seed=0, preset=study.data.preset)
        prepare(raw, cache, crop=crop, spacing=study.data.spacing, progress=False)
    data_s = time.perf_counter() - t0
    flat = {**study.reference, "data.cache": str(cache), "model.crop": crop}
    flat["train.device"] = args.device
    if args.arch:
        flat["model.arch"] = args.arch
    cfg = RunConfig.from_flat(flat)
    per_round = run_slice(cfg, args.rounds, args.device)
    steady = [r["seconds"] for r in per_round[1:]] or [per_round[0]["seconds"]]
    _, cells = build_cells(study, planned_paths(study, work / "plan"))
    extra = seed_cells(study, cells, {c.arm: study.learning_rates[0] for c in cells})
    n_cells = len(cells) + len(extra)
    projected = float(np.median(steady)) * cfg.fl.rounds * n_cells
    report = {
        "config": str(args.config),
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "sites": sites,
        "patients": patients,
        "arch": cfg.model.arch,
        "crop": crop,
        "data_seconds": data_s,
        "rounds": per_round,
        "seconds_per_round": float(np.median(steady)),
        "study_cells": n_cells,
        "round_cap": cfg.fl.rounds,
        "projected_study_hours": projected / 3600,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
