"""``fl_overhead.py --profile``: a federated run under cProfile, its time by phase.

The ServerApp thread (the round's critical path) is profiled from the end of round ``start`` to
the end of the last round; every ClientApp call in the Ray actors is profiled there and dumped
to a folder. ``fedprostate.report.profile_phases`` attributes the functions' time to phases by
module and function names; waiting for the sites minus the sites' own work is what Ray (actor
scheduling, object transfer) and Flower's message passing around the ClientApp cost.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import tempfile
import threading
import time
from pathlib import Path

from flwr.clientapp import ClientApp

from fedprostate.fl import simulation
from fedprostate.records.run_folder import RunRecorder
from fedprostate.report.profile_phases import attribute, table_rows

SERDE = (
    r"flwr/common/serde|flwr/proto/|google/protobuf|flwr/app/(array|record|message)|"
    r"flwr/common/inflatable|flwr/supercore/object_store|fedprostate/fl/wire\.py|"
    r"numpy/lib/format\.py|copy\.py:deepcopy$|pickle|cloudpickle"
)
LOGGING = r"/logging/__init__\.py|records/audit\.py|fl/site\.py:audit_sent$|fl/server\.py:audit_round$|run_folder\.py:append_round$|tensorboard|mlflow"
SERVER_RULES = [
    ("checkpoint write", r"run_folder\.py:(save_checkpoint|prune_checkpoints)$"),
    ("server-side pooled evaluation", r"fl/server\.py:(score|evaluate)$"),
    ("logging + metrics line", LOGGING),
    ("codec", r"fedprostate/compress/"),
    ("message (de)serialization", SERDE),
    ("server aggregation", r"fl/strategies\.py:aggregate|fl/robust\.py|fl/dp\.py|"
     r"flwr/serverapp/strategy/.*:(aggregate\w*|_aggregate\w*|inplace\w*)$|strategy_utils\.py"),
    ("waiting for the sites (Ray + their work)", r"time\.sleep|flwr/server/grid/.*:"
     r"(send_and_receive|pull_messages)$|_thread\.lock|threading\.py:wait$"),
    ("Flower server loop (configure, sample)", r"flwr/serverapp/strategy/|fl/strategies\.py"),
]  # fmt: skip
TRAINING = "site: local training"
SITE_RULES = [
    (TRAINING, r"engine/loop\.py:train_local$|engine/dp_sgd\.py"),
    ("site: validation inside train_round", r"engine/loop\.py:score_dataset$"),
    ("site: model load, state files", r"fl/client\.py:(load_global|_load_state|_save_state)$|"
     r"engine/setup\.py"),
    ("site: codec", r"fedprostate/compress/"),
    ("site: logging + audit", LOGGING),
    ("site: message (de)serialization", SERDE),
]  # fmt: skip
RAY = "Ray/actor scheduling + transfer (wait − sites' work)"
ORDER = [r[0] for r in SERVER_RULES] + [r[0] for r in SITE_RULES] + [RAY]


class ProfiledClientApp(ClientApp):
    """A ClientApp whose every call is profiled and dumped (in the Ray actor that runs it)."""

    def __init__(self, app: ClientApp, out_dir: str):
        super().__init__()
        self.app, self.out_dir = app, out_dir

    def __call__(self, message, context):
        prof = cProfile.Profile()
        prof.enable()
        try:
            return self.app(message, context)
        finally:
            prof.disable()
            config = message.content.config_records.get("config", {})
            rnd = int(config.get("server-round", 0))
            name = f"site-r{rnd:04d}-{os.getpid()}-{time.time_ns()}.prof"
            prof.dump_stats(os.path.join(self.out_dir, name))


def profiled_federate(federate, cfg, run: Path, start: int) -> dict:
    """``federate(cfg, run)`` with the profilers on; seconds per phase per round after ``start``."""
    site_dir = tempfile.mkdtemp(prefix="fl_profile_sites_")
    server = cProfile.Profile()
    window: dict = {}
    real_append, real_make = RunRecorder.append_round, simulation.make_client_app

    def append_round(self, entry):
        out = real_append(self, entry)
        if entry["round"] == start:
            window["t0"] = time.perf_counter()
            window["thread"] = threading.get_ident()
            server.enable()  # this (the ServerApp) thread, from here
        elif entry["round"] == cfg.fl.rounds and "t0" in window:
            server.disable()
            window["wall"] = time.perf_counter() - window["t0"]
        return out

    RunRecorder.append_round = append_round
    simulation.make_client_app = lambda flat: ProfiledClientApp(real_make(flat), site_dir)
    try:
        federate(cfg, run)
    finally:
        RunRecorder.append_round, simulation.make_client_app = real_append, real_make
    rounds = cfg.fl.rounds - start
    seconds = attribute(pstats.Stats(server).stats, SERVER_RULES)
    site_files = [str(p) for p in Path(site_dir).glob("site-r*.prof") if int(p.name[6:10]) > start]
    site_total = 0.0
    if site_files:
        site_stats = pstats.Stats(*site_files).stats
        site_total = sum(row[2] for row in site_stats.values())
        for phase, sec in attribute(site_stats, SITE_RULES).items():
            key = phase if phase.startswith("site") else "site: other (ClientApp glue, Flower)"
            seconds[key] = seconds.get(key, 0.0) + sec
    wait = "waiting for the sites (Ray + their work)"
    if wait in seconds:  # the sites' own work happened during the server's wait
        seconds[RAY] = max(seconds.pop(wait) - site_total, 0.0)
    return {
        "rounds": rounds,
        "wall_per_round": window.get("wall", float("nan")) / max(rounds, 1),
        "rows": table_rows(seconds, ORDER, per=max(rounds, 1)),
    }
