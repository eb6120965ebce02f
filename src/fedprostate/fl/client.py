"""What one hospital does in a round, as plain functions (the ClientApp only marshals records).

Per-site state that must survive rounds and resumes (error-feedback residuals, trained-but-local
tensors) lives in the site's own state folder, one file per round, so a round that is redone after
a crash starts from exactly the state the first attempt started from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fedprostate.compress import delta
from fedprostate.compress.codecs import CodecSpec
from fedprostate.compress.error_feedback import ErrorFeedback
from fedprostate.config import RunConfig
from fedprostate.engine import privacy, setup
from fedprostate.engine.dp_sgd import train_local_private
from fedprostate.engine.loop import lr_scale, score_dataset, train_local
from fedprostate.fl.site import (  # noqa: F401  (re-exported: the site's identity and audit)
    EVAL_SPLITS,
    PublicError,
    SiteContext,
    audit_sent,
    check_eval_allowed,
    site_context,
    site_limits,
)

log = logging.getLogger("fedprostate.site")


def _state_file(site: SiteContext, kind: str, server_round: int) -> Path | None:
    if site.state_dir is None:
        return None
    return site.state_dir / f"{kind}_round{server_round:04d}.safetensors"


def _load_state(site: SiteContext, kind: str, server_round: int) -> dict[str, torch.Tensor] | None:
    """State written after the most recent round before ``server_round`` (None if none)."""
    if site.state_dir is None or not site.state_dir.exists():
        return None
    earlier = sorted(
        p
        for p in site.state_dir.glob(f"{kind}_round*.safetensors")
        if int(p.stem.rsplit("round", 1)[1]) < server_round
    )
    return load_file(str(earlier[-1])) if earlier else None


def _save_state(
    site: SiteContext, kind: str, server_round: int, tensors: dict[str, torch.Tensor]
) -> None:
    path = _state_file(site, kind, server_round)
    if path is None or not tensors:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def decode_global(
    cfg: RunConfig, received: dict[str, np.ndarray], downlink: str
) -> dict[str, np.ndarray]:
    """The global tensors a site works from: the broadcast decoded with its ``downlink`` codec."""
    shapes = setup.communicated_shapes(setup.build_model(cfg).ft)
    return delta.unpack_downlink(received, CodecSpec.parse(downlink), shapes)


def load_global(
    cfg: RunConfig, global_tensors: dict[str, np.ndarray], expected_sha: str = ""
) -> setup.ModelBundle:
    """The model with ``global_tensors`` loaded, after checking the foundation's hash."""
    bundle = setup.build_model(cfg)
    if expected_sha and expected_sha != bundle.foundation_sha256:
        raise PublicError(
            f"this site's foundation backbone (sha256 {bundle.foundation_sha256[:12]}…) "
            f"differs from the server's ({expected_sha[:12]}…): updates on another backbone "
            "are meaningless; "
            "install the consortium's foundation checkpoint"
        )
    setup.load_communicated(bundle.ft, global_tensors)
    return bundle


def check_site_budget(cfg: RunConfig, site: SiteContext, server_round: int, n_train: int) -> None:
    """The site's own accountant: refuse to train when this round would exceed its budget."""
    p = cfg.privacy
    if not (p.dp_sgd and p.epsilon > 0):
        return
    eps = privacy.patient_epsilon(cfg, n_train, server_round, p.delta).cumulative
    if eps > p.epsilon:
        raise PublicError(
            f"site {site.name}: privacy budget: patient-level epsilon after round {server_round} "
            f"would be {eps:.3g} > privacy.epsilon = {p.epsilon:g}; not training"
        )


def site_val_due(cfg: RunConfig, server_round: int) -> bool:
    """Whether a site scores its validation split in this training round (``fl.site_val_every``:
    every k rounds and the last one; 0 = never)."""
    every = cfg.fl.site_val_every
    return every > 0 and (server_round % every == 0 or server_round >= cfg.fl.rounds)


def train_round(
    cfg: RunConfig,
    site: SiteContext,
    server_round: int,
    global_tensors: dict[str, np.ndarray],
    expected_sha: str = "",
) -> tuple[dict[str, np.ndarray], dict]:
    """Train on this site's data from the global tensors; return (full tensors, metrics).

    The tensors come back in the order they arrived (Flower's clipping mods compare the keys).
    Under differential privacy only the tensors carry information: num-examples is 1 (equal
    weights, as the noise calibration assumes) and the loss and validation scores are NaN. The
    site scores its validation split only in rounds that ``fl.site_val_every`` asks for (else
    val-auroc NaN, val-n 0: the same metric keys every round).
    """
    bundle = load_global(cfg, global_tensors, expected_sha)
    ft = bundle.ft
    setup.set_local_state(ft, _load_state(site, "local", server_round) or bundle.initial_local)
    train_ds = setup.client_dataset(cfg, site.name, "train")
    seed = setup.client_seed(cfg, server_round, site.name)
    scale = lr_scale(cfg.train, server_round, cfg.fl.rounds)
    if cfg.privacy.dp_sgd:
        check_site_budget(cfg, site, server_round, len(train_ds))
        result = train_local_private(ft.model, train_ds, cfg.train, cfg.privacy, seed, scale)
    else:
        anchors = {k: torch.from_numpy(v) for k, v in global_tensors.items()}
        result = train_local(
            ft.model,
            train_ds,
            cfg.train,
            seed=seed,
            global_params=anchors,
            teacher=setup.teacher_model(cfg),
            kd_temperature=cfg.distill.temperature,
            kd_alpha=cfg.distill.alpha,
            lr_scale=scale,
        )
    _save_state(site, "local", server_round, setup.local_state(ft))
    trained = setup.communicated_numpy(ft)
    out = {k: trained[k] for k in global_tensors}
    if cfg.privacy.enabled:
        metrics = {
            "num-examples": 1,
            "train-loss": float("nan"),
            "val-auroc": float("nan"),
            "val-n": 0,
            "steps": result.steps,
        }
        log.info("site %s round %d: trained %d DP steps", site.name, server_round, result.steps)
        return out, metrics
    val = {"auroc": float("nan"), "n": 0}
    if site_val_due(cfg, server_round):
        val, _ = score_dataset(ft.model, setup.client_dataset(cfg, site.name, "val"))
    metrics = {
        "num-examples": result.num_examples,
        "train-loss": result.loss,
        "val-auroc": val["auroc"],
        "val-n": val["n"],
        "steps": result.steps,
    }
    log.info(
        "site %s round %d: loss %.4f, val AUROC %.3f",
        site.name,
        server_round,
        result.loss,
        val["auroc"],
    )
    return out, metrics


def encode_reply(
    cfg: RunConfig,
    site: SiteContext,
    server_round: int,
    trained: dict[str, np.ndarray],
    global_tensors: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """What leaves the site: the trained tensors in its uplink codec (relative to the global it
    received), with error feedback when configured."""
    spec = CodecSpec.parse(site.uplink)
    feedback = None
    if cfg.compress.error_feedback and not delta.is_raw(spec):
        saved = _load_state(site, "ef", server_round)
        feedback = ErrorFeedback({k: v.numpy() for k, v in saved.items()} if saved else None)
    rng = np.random.default_rng(setup.client_seed(cfg, server_round, site.name))
    out = delta.pack_uplink(trained, global_tensors, spec, rng, feedback)
    if feedback is not None:
        _save_state(
            site,
            "ef",
            server_round,
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feedback.residual.items()},
        )
    return out


def evaluate_round(
    cfg: RunConfig,
    site: SiteContext,
    server_round: int,
    global_tensors: dict[str, np.ndarray],
    split: str = "val",
    expected_sha: str = "",
) -> dict:
    """Federated evaluation of the global model on this site's ``split``."""
    bundle = load_global(cfg, global_tensors, expected_sha)
    setup.set_local_state(
        bundle.ft, _load_state(site, "local", server_round + 1) or bundle.initial_local
    )
    m, _ = score_dataset(bundle.ft.model, setup.client_dataset(cfg, site.name, split))
    return {"num-examples": int(m["n"]), "auroc": m["auroc"], "ap": m["ap"], "loss": m["loss"]}


def evaluate_received(
    cfg: RunConfig,
    site: SiteContext,
    server_round: int,
    received: dict[str, np.ndarray],
    downlink: str = "fp32",
    split: str = "val",
    expected_sha: str = "",
) -> dict:
    """``evaluate_round`` of the broadcast as it arrived (decoded here with ``downlink``)."""
    global_tensors = decode_global(cfg, received, downlink)
    return evaluate_round(cfg, site, server_round, global_tensors, split, expected_sha)


def run_step(op: str, cfg: RunConfig, site: SiteContext, server_round: int, received, kwargs):
    """One message's work: ``train_round`` for "train", else ``evaluate_received`` (the same
    dispatch for a ClientApp that works itself and for a site's warm process)."""
    step = train_round if op == "train" else evaluate_received
    return step(cfg, site, server_round, received, **kwargs)
