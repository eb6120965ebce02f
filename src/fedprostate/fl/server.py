"""The server side of a federated run as a plain function over a Flower ``Grid``.

``run_server`` builds the strategy, resumes from the last checkpoint when asked, drives Flower's
own ``Strategy.start`` and records every round. In simulation (the server can read the crop cache)
it also scores the pooled validation and benchmark test splits every ``fl.eval_every`` rounds; the
best round is chosen on validation, never on test. In deployment evaluation is federated only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, MetricRecord

from fedprostate.config import RunConfig
from fedprostate.engine import setup
from fedprostate.engine.loop import score_dataset
from fedprostate.engine.selection import BestOnValidation, EarlyStop
from fedprostate.eval.calibration import calibration_report
from fedprostate.fl import wire
from fedprostate.fl.registry import SiteRegistry
from fedprostate.fl.strategies import make_strategy
from fedprostate.records import predictions
from fedprostate.records.audit import AUDIT_FILE, AuditLog
from fedprostate.records.run_folder import Checkpoint, RunRecorder, file_sha256

log = logging.getLogger("fedprostate.server")


class BenchmarkScorer:
    """Server-side scoring of pooled val/test splits (simulation only); remembers the best round."""

    def __init__(self, cfg: RunConfig, history: list[dict] | None = None):
        self.cfg = cfg
        self.sets = {split: setup.pooled_dataset(cfg, split) for split in ("val", "test")}
        self.best: dict | None = None
        self.last: dict | None = None
        self.chooser = BestOnValidation(cfg.fl.patience)
        for entry in history or []:  # a resumed run continues the same choice and patience
            if "val" in entry:
                self.chooser.offer(entry["round"], entry["val"]["auroc"])

    def evaluate(self, server_round: int, arrays: dict[str, np.ndarray]) -> dict:
        """Metrics (headline rows) and predictions (every row) of one round's model."""
        bundle = setup.build_model(self.cfg)
        setup.load_communicated(bundle.ft, arrays)
        setup.set_local_state(bundle.ft, bundle.initial_local)
        out, preds = {}, {}
        for split, ds in self.sets.items():
            out[split], scores = score_dataset(bundle.ft.model, ds)
            preds[split] = predictions.from_index(ds.rows, scores, server_round)
        return {"round": server_round, "metrics": out, "predictions": preds}

    def score(self, server_round: int, arrays: dict[str, np.ndarray]) -> dict:
        entry = self.evaluate(server_round, arrays)
        self.last = entry
        if self.chooser.offer(server_round, entry["metrics"]["val"]["auroc"]):  # never round 0
            self.best = entry
        return entry["metrics"]


def site_registry(cfg: RunConfig) -> tuple[SiteRegistry | None, int]:
    """(who may reply, number of sites): the coordinator's registry file in a deployment; in
    simulation the cache's sites by name with their split sizes."""
    if cfg.fl.sites:
        registry = SiteRegistry.load(cfg.fl.sites)
        return registry, len(registry.by_node)
    if cfg.data.cache:
        names = setup.client_names(cfg)
        sizes = {
            n: {s: len(setup.client_dataset(cfg, n, s)) for s in ("train", "val")} for n in names
        }
        return SiteRegistry.by_name(sizes), len(names)
    log.warning("no site registry (fl.sites): replies are identified by the site they claim")
    return None, cfg.fl.min_available_nodes


def finished_already(cfg: RunConfig, recorder: RunRecorder) -> dict | None:
    """The summary of a run that already completed ``fl.rounds`` rounds, else None."""
    path = recorder.dir / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    done = recorder.last_good_round()
    if summary.get("status") == "finished" and done is not None and done.round >= cfg.fl.rounds:
        return summary
    return None


def run_server(grid, cfg: RunConfig) -> dict:
    if not cfg.out:
        raise ValueError("the run folder (config key 'out') is not set")
    t0 = time.time()
    recorder = RunRecorder(Path(cfg.out))
    audit = AuditLog(recorder.dir / AUDIT_FILE)
    if cfg.resume and (summary := finished_already(cfg, recorder)) is not None:
        log.info("run %s already finished %d rounds: nothing to do", cfg.out, cfg.fl.rounds)
        audit.append("resume_noop", reason="already finished", rounds=cfg.fl.rounds)
        return summary
    bundle = setup.build_model(cfg)
    shapes = setup.communicated_shapes(bundle.ft)
    arrays = dict(bundle.initial_communicated)
    simulation = bool(cfg.data.cache)
    registry, num_clients = site_registry(cfg)
    strategy = make_strategy(cfg, num_clients)
    random.seed(cfg.seed)  # Flower's node sampling draws from the global `random`
    offset, wall_before = 0, 0.0
    ckpt = recorder.last_good_round() if cfg.resume else None
    if ckpt is not None:
        offset, arrays = ckpt.round, ckpt.arrays
        strategy.load_optimizer_state(ckpt.strategy_state)
        random.setstate(_to_random_state(ckpt.meta["random_state"]))
        wall_before = float(ckpt.meta.get("wall_s", 0.0))
        recorder.truncate_after(offset)
        log.info("resuming after round %d of %d", offset, cfg.fl.rounds)
    else:
        recorder.metrics_path.unlink(missing_ok=True)
    setup.start_tracking(recorder, cfg, resume_after=offset if cfg.resume else None)
    recorder.write_config(cfg.to_toml(), cfg.to_flat())
    audit.append(
        "run_started",
        run_dir=recorder.dir.name,
        strategy=cfg.fl.strategy,
        clip_norm=cfg.fl.clip_norm,
        rounds=cfg.fl.rounds,
        resumed_after=offset,
        sites=sorted(registry.by_site) if registry else None,
        config_sha256=hashlib.sha256(cfg.to_toml().encode()).hexdigest(),
    )
    strategy.attach(
        shapes,
        cfg.compress.downlink,
        cfg.seed,
        bundle.foundation_sha256,
        offset,
        registry=registry,
        node_wait=cfg.fl.round_timeout,
        clip_norm=cfg.fl.clip_norm,
    )
    scorer = BenchmarkScorer(cfg, recorder.read_rounds()) if simulation else None

    def evaluate_fn(server_round: int, record) -> MetricRecord | None:
        current = server_round + offset
        if server_round == 0 and offset > 0:
            return None
        tensors = wire.from_record(record)
        entry: dict = {"round": current, "time_s": round(time.time() - t0 + wall_before, 2)}
        if server_round > 0:
            entry.update(strategy.ledger.pop())
            audit_round(audit, entry)
        due = current % cfg.fl.eval_every == 0 or current == cfg.fl.rounds
        if scorer is not None and due:
            entry.update(scorer.score(current, tensors))
        # The metrics line first, then the checkpoint that marks the round complete: a crash in
        # between redoes the round (its line is dropped on resume) and never loses its line.
        recorder.append_round(entry)
        if server_round > 0:
            meta = {
                "random_state": _from_random_state(random.getstate()),
                "wall_s": time.time() - t0 + wall_before,
            }
            recorder.save_checkpoint(Checkpoint(current, tensors, strategy.optimizer_state(), meta))
            recorder.prune_checkpoints(cfg.keep_last)
            if scorer is not None and scorer.chooser.should_stop and current < cfg.fl.rounds:
                raise EarlyStop(current, scorer.chooser.best_round)
        if "val" in entry:
            return MetricRecord(
                {
                    f"{s}-{k}": float(v)
                    for s in ("val", "test")
                    for k, v in entry[s].items()
                    if k in ("auroc", "ap", "loss")
                }
            )
        return None

    remaining = cfg.fl.rounds - offset
    final = arrays
    stopped = None
    if remaining > 0:
        try:
            result = strategy.start(
                grid=grid,
                initial_arrays=wire.to_record(arrays),
                num_rounds=remaining,
                timeout=cfg.fl.round_timeout,
                train_config=ConfigRecord({"phase": "train"}),
                evaluate_config=ConfigRecord({"split": "val"}),
                evaluate_fn=evaluate_fn,
            )
            final = wire.from_record(result.arrays) if result.arrays is not None else arrays
        except EarlyStop as stop:
            log.info("%s", stop)
            stopped = {"round": stop.round, "best_round": stop.best_round}
            final = recorder.latest_checkpoint(keep_strategy_state=False).arrays
    if scorer is not None:
        _rescore_best_if_earlier(scorer, recorder)
    model_round = chosen_round(recorder, scorer)
    shipped = recorder.load_checkpoint(model_round).arrays if model_round else final
    recorder.write_model(shipped)  # the validation-chosen round's weights, as exported
    summary = summarize(cfg, recorder, scorer, bundle, time.time() - t0 + wall_before)
    summary["model_round"] = model_round
    if stopped is not None:
        summary["stopped_early"] = stopped
    recorder.write_summary(summary)
    audit.append(
        "run_finished",
        status=summary["status"],
        reason=summary.get("reason"),
        model_round=model_round,
        model_sha256=file_sha256(recorder.dir / "model.safetensors"),
        rejected_replies=summary["rejected_replies"],
    )
    return summary


def audit_round(audit: AuditLog, entry: dict) -> None:
    """Per round: which nodes replied with how many bytes, every rejection and why."""
    audit.append(
        "round",
        round=entry["round"],
        replied=[
            {k: c.get(k) for k in ("site", "node", "bytes_up", "bytes_down", "num-examples")}
            | (
                {"num-examples-claimed": c["num-examples-claimed"]}
                if "num-examples-claimed" in c
                else {}
            )
            | ({"update_norm": c["update_norm"]} if "update_norm" in c else {})
            for c in entry.get("clients", [])
        ],
        rejected=entry.get("rejected", []),
        evaluated=[e.get("site") for e in entry.get("fed_eval", []) if "error" not in e],
        notes=entry.get("notes", []),
    )


def chosen_round(recorder: RunRecorder, scorer: BenchmarkScorer | None) -> int:
    """The round whose weights the run ships: best on validation (server-scored in simulation,
    federated validation AUROC in a deployment), else the last completed round (0: none)."""
    if scorer is not None and scorer.best is not None:
        return int(scorer.best["round"])
    rounds = [e for e in recorder.read_rounds() if e["round"] > 0]
    scored = [
        (e["fed_eval_auroc"], e["round"])
        for e in rounds
        if isinstance(e.get("fed_eval_auroc"), float) and np.isfinite(e["fed_eval_auroc"])
    ]
    if scored:
        return max(scored, key=lambda item: (item[0], -item[1]))[1]
    done = recorder.checkpoint_rounds()
    return done[-1] if done else 0


def summarize(
    cfg: RunConfig,
    recorder: RunRecorder,
    scorer: BenchmarkScorer | None,
    bundle: setup.ModelBundle,
    wall_s: float,
) -> dict:
    rounds = recorder.read_rounds()
    up, down = defaultdict(list), defaultdict(list)
    for entry in rounds:
        for c in entry.get("clients", []):
            up[c["site"]].append(c["bytes_up"])
            down[c["site"]].append(c["bytes_down"])
    mb = 1e6
    all_up = [b for v in up.values() for b in v]
    all_down = [b for v in down.values() for b in v]
    accepted = sum(len(e.get("clients", [])) for e in rounds if e["round"] > 0)
    rejected = [r for e in rounds for r in e.get("rejected", [])]
    summary = {
        **setup.summary_head(cfg, "federated", bundle, wall_s),
        "strategy": cfg.fl.strategy,
        "uplink_codec": cfg.compress.uplink,
        "uplink_mb_per_client_round": float(np.mean(all_up) / mb) if all_up else 0.0,
        "downlink_mb_per_client_round": float(np.mean(all_down) / mb) if all_down else 0.0,
        "uplink_mb_per_site": {s: float(np.mean(v) / mb) for s, v in sorted(up.items())},
        "downlink_mb_per_site": {s: float(np.mean(v) / mb) for s, v in sorted(down.items())},
        "total_mb": float((sum(all_up) + sum(all_down)) / mb),
        "rejected_replies": len(rejected),
    }
    if accepted == 0 and any(e["round"] > 0 for e in rounds):
        first = rejected[0]["reason"] if rejected else "no site replied"
        summary["status"] = "failed"
        summary["reason"] = (
            f"no update was aggregated in any round ({len(rejected)} replies rejected; "
            f"first: {first})"
        )
        return summary
    if scorer is not None and scorer.best is not None and scorer.last is not None:
        best, last = scorer.best, scorer.last
        summary.update(
            {
                "best_round": best["round"],
                "val_auroc": best["metrics"]["val"]["auroc"],
                "test_auroc": best["metrics"]["test"]["auroc"],
                "test_ap": best["metrics"]["test"]["ap"],
                "last_round_test_auroc": last["metrics"]["test"]["auroc"],
                "calibration": calibration_report(
                    best["predictions"]["val"], best["predictions"]["test"]
                ),
            }
        )
        for tag, entry in (("best", best), ("last", last)):
            for split in ("val", "test"):
                recorder.write_predictions(split, tag, entry["predictions"][split])
    return summary


def _rescore_best_if_earlier(scorer: BenchmarkScorer, recorder: RunRecorder) -> None:
    """After a resume the best round may predate this process: score its checkpoint again."""
    best_round = scorer.chooser.best_round
    if best_round is None or (scorer.best is not None and scorer.best["round"] == best_round):
        return
    scorer.best = scorer.evaluate(
        best_round, recorder.load_checkpoint(best_round, keep_strategy_state=False).arrays
    )


def _from_random_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _to_random_state(saved: list) -> tuple:
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)
