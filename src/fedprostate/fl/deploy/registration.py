"""The coordinator admits a hospital: its key into Flower, its node id and sizes into the registry.

``flwr supernode register KEY CONNECTION`` (the Control API, reachable only from the
coordinator's loopback) answers with the node id Flower stamps on every message from that key;
that id, the hospital's site name and its preflight split sizes go into the site registry
(``fl.sites``) the ServerApp trusts, and the registration into the coordinator's audit log.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from fedprostate.fl.registry import lookup_site, register_site
from fedprostate.records.audit import AuditLog


def register_node(
    flwr: Callable[[list[str]], str],
    public_key: Path,
    site: str,
    train: int,
    val: int,
    registry: Path,
    audit: AuditLog,
    connection: str = "",
) -> int:
    """Register ``public_key`` as ``site`` (once: a key already in the registry keeps its node
    id, so a restarted coordinator never re-registers); returns the node id."""
    key_sha = hashlib.sha256(Path(public_key).read_bytes()).hexdigest()
    known = lookup_site(registry, site)
    if known is not None and known[1].public_key_sha256 == key_sha:
        node_id = known[0]
    else:
        args = ["supernode", "register", str(public_key), *([connection] if connection else [])]
        out = flwr([*args, "--format", "json"])
        try:
            node_id = int(json.loads(out[out.find("{") :])["node-id"])
        except (ValueError, KeyError) as exc:
            raise RuntimeError(f"registering {site} failed:\n{out}") from exc
        audit.append(
            "site_registered",
            site=site,
            node_id=node_id,
            public_key_sha256=key_sha,
            train=train,
            val=val,
            by=getpass.getuser(),
        )
    register_site(registry, node_id, site, train, val, key_sha)
    return node_id
