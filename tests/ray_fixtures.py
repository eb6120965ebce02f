"""A multi-node Ray cluster on this one machine, and a record of where each client message ran.

``two_node_cluster`` starts a head and a worker node with Ray's own test utility
(``ray.cluster_utils.Cluster``: separate raylets, object stores and worker pools, as on two
machines), each with one CPU and a custom resource naming it, in a short private temp folder, and
removes both nodes (only the processes it started) when the test ends.

``recording`` wraps a ClientApp: before each message it appends the Ray node id and process id
it runs on to a JSON-lines file, then hands the message to the real ClientApp unchanged. Ray
workers import this module by name: Flower's Ray backend passes the driver's ``sys.path`` (which
holds ``tests/``) to every worker as ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp


@contextmanager
def two_node_cluster(cpus_per_node: int = 1) -> Iterator[tuple[str, dict[str, str]]]:
    """(GCS address, node id → node name) of a running 2-node cluster; removed on exit."""
    import ray
    from ray.cluster_utils import Cluster

    # Unix socket paths must stay under ~107 characters: a short folder of our own, not tmp_path.
    # RAY_TMPDIR also keeps the "current cluster" address file in it, away from other Rays here.
    temp = tempfile.mkdtemp(prefix="fpray")
    (Path(temp) / "ray").mkdir()
    old_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    common = {
        "num_cpus": cpus_per_node,
        "include_dashboard": False,
        "temp_dir": f"{temp}/ray",
    }
    cluster = Cluster(shutdown_at_exit=True)
    try:
        head = cluster.add_node(**common, resources={"node_head": 1})
        worker = cluster.add_node(**common, resources={"node_worker": 1})
        cluster.wait_for_nodes()
        names = {head.node_id: "head", worker.node_id: "worker"}
        yield cluster.address, names
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        if old_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmpdir
        shutil.rmtree(temp, ignore_errors=True)


def _record(log_dir: str, phase: str, context: Context) -> None:
    import ray

    line = {
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "partition": int(context.node_config["partition-id"]),
        "phase": phase,
    }
    with open(Path(log_dir) / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def recording(inner: ClientApp, log_dir: str) -> ClientApp:
    """``inner``, with each message's Ray node and process appended to ``log_dir``."""
    outer = ClientApp()

    @outer.train()
    def train(msg: Message, context: Context) -> Message:
        _record(log_dir, "train", context)
        return inner(msg, context)

    @outer.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        _record(log_dir, "evaluate", context)
        return inner(msg, context)

    return outer


def recorded(log_dir: str | Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(Path(log_dir).glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
