"""The server side of federated pre-training as a plain function over a Flower ``Grid``.

The configured Flower strategy (``fl.strategy``: FedAvg, FedAdam, …) with the project's hooks
(``strategies.ProjectHooks``: codecs both ways, byte counts per site, malformed replies filtered)
aggregates the objective's state; nothing is evaluated by the sites (``fraction_evaluate`` 0:
there are no labels). Every round appends a line to ``metrics.jsonl`` (per-site bytes and SSL
loss, their example-weighted mean loss) and writes a checkpoint, so ``--resume`` continues from
the last completed round as a fine-tuning run does.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord

from fedprostate.config import RunConfig
from fedprostate.fl import wire
from fedprostate.fl.pretrain_site import build_task, global_numpy, shapes_of
from fedprostate.fl.replies import PRETRAIN_METRICS
from fedprostate.fl.strategies import make_strategy
from fedprostate.records.run_folder import Checkpoint, RunRecorder

log = logging.getLogger("fedprostate.server")


def run_pretrain_server(grid, cfg: RunConfig) -> dict:
    if not cfg.out:
        raise ValueError("the run folder (config key 'out') is not set")
    t0 = time.time()
    recorder = RunRecorder(Path(cfg.out))
    task = build_task(cfg)
    arrays = global_numpy(task)
    strategy = make_strategy(cfg.replace(**{"fl.fraction_evaluate": 0.0}), cfg.pretrain.sites)
    random.seed(cfg.seed)
    offset, wall_before = 0, 0.0
    if cfg.resume and (ckpt := recorder.latest_checkpoint()) is not None:
        offset, arrays = ckpt.round, ckpt.arrays
        strategy.load_optimizer_state(ckpt.strategy_state)
        wall_before = float(ckpt.meta.get("wall_s", 0.0))
        recorder.truncate_after(offset)
        log.info("resuming federated pre-training after round %d of %d", offset, cfg.fl.rounds)
    elif not cfg.resume:
        recorder.metrics_path.unlink(missing_ok=True)
    recorder.write_config(cfg.to_toml(), cfg.to_flat())
    strategy.attach(shapes_of(task), cfg.compress.downlink, cfg.seed, "", offset)
    # after attach (which sets the fine-tuning whitelist): no labels, so no validation AUROC
    strategy.train_metrics = PRETRAIN_METRICS

    def evaluate_fn(server_round: int, record):
        current = server_round + offset
        if server_round == 0:
            return None
        entry = {"round": current, "time_s": round(time.time() - t0 + wall_before, 2)}
        entry.update(strategy.ledger.pop())
        clients = entry["clients"]
        if clients:
            weights = np.array([c["num-examples"] for c in clients], dtype=float)
            losses = np.array([c["train-loss"] for c in clients], dtype=float)
            entry["loss"] = float((weights * losses).sum() / weights.sum())
        recorder.append_round(entry)
        meta = {"wall_s": time.time() - t0 + wall_before}
        state = strategy.optimizer_state()
        recorder.save_checkpoint(Checkpoint(current, wire.from_record(record), state, meta))
        recorder.prune_checkpoints(cfg.keep_last)
        return None

    final = arrays
    remaining = cfg.fl.rounds - offset
    if remaining > 0:
        result = strategy.start(
            grid=grid,
            initial_arrays=wire.to_record(arrays),
            num_rounds=remaining,
            timeout=cfg.fl.round_timeout,
            train_config=ConfigRecord({"phase": "pretrain"}),
            evaluate_fn=evaluate_fn,
        )
        final = wire.from_record(result.arrays) if result.arrays is not None else arrays
    recorder.write_model(final)
    summary = summarize_pretrain(cfg, recorder, time.time() - t0 + wall_before)
    recorder.write_summary(summary)
    return summary


def summarize_pretrain(cfg: RunConfig, recorder: RunRecorder, wall_s: float) -> dict:
    rounds = [e for e in recorder.read_rounds() if e["round"] > 0]
    up = [c["bytes_up"] for e in rounds for c in e.get("clients", [])]
    down = [c["bytes_down"] for e in rounds for c in e.get("clients", [])]
    summary = {
        "kind": "federated-pretrain",
        "status": "finished",
        "rounds": cfg.fl.rounds,
        "method": cfg.pretrain.method,
        "arch": cfg.model.arch,
        "wall_s": round(wall_s, 2),
        "sites": cfg.pretrain.sites,
        "strategy": cfg.fl.strategy,
        "uplink_codec": cfg.compress.uplink,
        "uplink_mb_per_client_round": float(np.mean(up) / 1e6) if up else 0.0,
        "downlink_mb_per_client_round": float(np.mean(down) / 1e6) if down else 0.0,
        "total_mb": float((sum(up) + sum(down)) / 1e6),
        "loss_history": [e.get("loss") for e in rounds],
        "rejected_replies": sum(len(e.get("rejected", [])) for e in rounds),
    }
    if not up:
        summary["status"] = "failed"
        first = next(
            (r["reason"] for e in rounds for r in e.get("rejected", [])), "no site replied"
        )
        summary["reason"] = f"no update was aggregated in any round (first: {first})"
    return summary
