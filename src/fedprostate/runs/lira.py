"""Shadow models for the LiRA attack of ``fedprostate audit RUN --shadows K``.

What the attacker is assumed to know: the audit pool (every training and held-out patient of the
audited run's sites, with images and labels; which of them trained the shipped model is what it
must guess) and the run's recipe (``config.toml``: model, foundation weights, fine-tuning method,
``train.*``, the shipped round). Each shadow is a fresh model trained by the project's one local
loop (``engine.loop.train_local``; ``engine.dp_sgd.train_local_private`` when the run used
patient-level DP-SGD) on its half of the pool, pooled in one place, for as many rounds as the
shipped model had, each round ``train.steps`` x sites steps (a federated round's compute, as
``centralize`` does) or ``--shadow-steps``. What a shadow does not reproduce: the federation
(FedAvg over sites) and client-level DP noise — both only make the shadows less like the target,
which weakens the attack, never the reported bound.

Cost: K x rounds x steps training steps plus K scorings of the pool (``wall_s`` in the report).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from fedprostate.config import RunConfig
from fedprostate.data.cache import CropDataset
from fedprostate.engine import setup
from fedprostate.engine.dp_sgd import train_local_private
from fedprostate.engine.loop import lr_scale, predict_scores, train_local
from fedprostate.eval.lira import logit_confidence
from fedprostate.eval.membership import per_patient

MIN_POOL_PATIENTS = 10


def shadow_recipe(cfg: RunConfig, summary: dict, steps: int | None) -> tuple[RunConfig, int]:
    """(the config a shadow trains with, its number of rounds = the shipped model's round)."""
    rounds = int(summary.get("model_round") or summary.get("best_round") or cfg.fl.rounds)
    if steps is not None:
        cfg = cfg.replace(**{"train.steps": steps, "train.epochs": 0})
    elif cfg.train.epochs == 0:
        cfg = cfg.replace(**{"train.steps": cfg.train.steps * len(setup.client_names(cfg))})
    return cfg, max(1, rounds)


def train_shadow(cfg: RunConfig, train_ds: CropDataset, rounds: int, name: str):
    """A fresh model trained on ``train_ds`` with the run's recipe; returns the model."""
    bundle = setup.build_model(cfg, fresh=True)
    model = bundle.ft.model
    for r in range(1, rounds + 1):
        seed = setup.client_seed(cfg, r, name)
        scale = lr_scale(cfg.train, r, cfg.fl.rounds)
        if cfg.privacy.dp_sgd:
            train_local_private(model, train_ds, cfg.train, cfg.privacy, seed, scale)
        else:
            train_local(
                model,
                train_ds,
                cfg.train,
                seed=seed,
                teacher=setup.teacher_model(cfg),
                kd_temperature=cfg.distill.temperature,
                kd_alpha=cfg.distill.alpha,
                lr_scale=scale,
            )
    return model


def shadow_phi(
    cfg: RunConfig,
    summary: dict,
    pool: CropDataset,
    keys: list[str],
    is_in: np.ndarray,
    steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict]:
    """([K, patients] phi of every shadow on every pool patient, the cost and recipe used).

    ``keys``: the patient of every row of ``pool``; ``is_in``: [K, patients] (patients in order
    of first appearance in ``keys``), which patients each shadow trains on.
    """
    _, patients = per_patient(np.zeros(len(keys)), keys)
    if len(patients) < MIN_POOL_PATIENTS:
        raise ValueError(
            f"{len(patients)} patients in the audit pool: shadow models need at least "
            f"{MIN_POOL_PATIENTS} (each trains on half of them)"
        )
    shadow_cfg, rounds = shadow_recipe(cfg, summary, steps)
    index = {p: i for i, p in enumerate(patients)}
    codes = np.asarray([index[k] for k in keys])
    t0 = time.perf_counter()
    phis = []
    for k, members in enumerate(is_in):
        rows = [row for row, c in zip(pool.rows, codes, strict=True) if members[c]]
        model = train_shadow(shadow_cfg, CropDataset(pool.cache_dir, rows), rounds, f"shadow{k}")
        probs, labels = predict_scores(model, pool)
        phis.append(per_patient(logit_confidence(probs, labels), keys)[0])
        if progress:
            progress(k + 1, len(is_in))
    cost = {
        "shadows": len(is_in),
        "rounds": rounds,
        "steps_per_round": shadow_cfg.train.steps if shadow_cfg.train.epochs == 0 else None,
        "epochs_per_round": shadow_cfg.train.epochs or None,
        "dp_sgd": bool(cfg.privacy.dp_sgd),
        "patients_per_shadow": float(is_in.sum(axis=1).mean()),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    return np.stack(phis), cost
