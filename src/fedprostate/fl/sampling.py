"""Which sites a round samples: a function of (seed, absolute round, phase) alone.

Flower's strategies sample with ``random.sample(grid.get_node_ids(), k)`` from Python's global
generator. Two things made that irreproducible across a kill and ``--resume``:

* the global generator: anything else in the server process that draws from it (Flower's
  retry back-off and heartbeat jitter) shifts the sequence; and
* the node ids: Flower's simulation draws them from ``os.urandom`` at every start, so the same
  positions in the sorted id list are other sites after a restart.

So, while Flower samples, the global generator is seeded from the run's seed, the absolute round
and the phase (its state is put back afterwards), and the node list is ordered by site name. The
site of a node is the registry's in a deployment; in simulation the server asks each node once
(a ``query`` message; the ClientApp answers with its site name only). Nobody is asked when the
round takes every connected node: then the order does not change who is sampled.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedprostate.fl.registry import SiteRegistry
from fedprostate.fl.wire import REPORT_KEY

SITE_QUERY = "site-name"  # the query's config key: the ClientApp answers with its site's name


@contextmanager
def seeded(seed: int, server_round: int, phase: str) -> Iterator[None]:
    """Seed Python's global generator for one sampling, then put its state back."""
    state = random.getstate()
    digest = hashlib.sha256(f"{seed}:{server_round}:{phase}".encode()).digest()
    random.seed(int.from_bytes(digest[:8], "little"))
    try:
        yield
    finally:
        random.setstate(state)


def subsamples(num_nodes: int, fraction: float, least: int) -> bool:
    """Whether Flower's sampler would leave a connected node out (its own sample size rule)."""
    return max(int(num_nodes * fraction), least) < num_nodes


def query_bytes(site: str | None = None) -> int:
    """Bytes a site query carries, counted like the rest of the ledger (keys and values as
    UTF-8, no protobuf framing): down, the key and its value 1; up, the report key, "site" and
    the name."""
    if site is None:
        return len(SITE_QUERY.encode()) + 1
    return len(REPORT_KEY.encode()) + len(b"site") + len(site.encode())


def ask_sites(grid, nodes: list[int], timeout: float) -> dict[int, str]:
    """node id -> site name, as each node answers a ``query`` message (silent nodes: absent)."""
    messages = [
        Message(
            content=RecordDict({"config": ConfigRecord({SITE_QUERY: 1})}),
            message_type=MessageType.QUERY,
            dst_node_id=node,
        )
        for node in nodes
    ]
    out: dict[int, str] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error() or REPORT_KEY not in reply.content.config_records:
            continue
        out[int(reply.metadata.src_node_id)] = str(
            reply.content.config_records[REPORT_KEY].get("site", "")
        )
    return out


class SiteOrder:
    """Orders node ids by their sites' names; remembers what the nodes answered."""

    def __init__(self, registry: SiteRegistry | None = None, timeout: float = 600.0):
        self.registry = registry
        self.timeout = timeout
        self.known: dict[int, str] = {}
        self.asked: dict = {}  # the last call's queries: nodes, bytes down and up (the ledger's)

    def __call__(self, grid, nodes: list[int]) -> list[int]:
        if self.registry is not None and self.registry.keyed_by_node:
            self.known.update({n: e.site for n, e in self.registry.by_node.items()})
        unknown = [n for n in nodes if n not in self.known]
        self.asked = {}
        if unknown:
            answers = ask_sites(grid, unknown, self.timeout)
            self.known.update(answers)
            self.asked = {
                "nodes": len(unknown),
                "bytes_down": len(unknown) * query_bytes(),
                "bytes_up": sum(query_bytes(site) for site in answers.values()),
            }
        # nodes without a site (not registered, silent) come last, by id
        return sorted(nodes, key=lambda n: (n not in self.known, self.known.get(n, ""), n))
