"""Who a reply comes from: the coordinator's site registry (node id → site, registered sizes).

In a deployment the coordinator writes one entry per hospital when it registers the hospital's
public key (``flwr supernode register`` answers with the node id Flower will stamp on every
message from that key), together with the split sizes the hospital's ``site preflight`` reported.
The ServerApp trusts only this file: a reply's claimed site must be the registered one of its
sending node, and its ``num-examples`` is capped at the registered size of the split it used.

In simulation there are no keys; the server reads the crop cache itself, so it builds a registry
keyed by site name (:meth:`SiteRegistry.by_name`): then a claimed site must exist and may reply
only once per round.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


class RegistryError(ValueError):
    """An unreadable or inconsistent site registry (the message names the file)."""


@dataclass(frozen=True)
class SiteEntry:
    site: str
    train: int  # registered training-set size: the cap on a training reply's num-examples
    val: int  # registered validation size: the cap on an evaluation reply's num-examples
    public_key_sha256: str = ""

    def cap(self, phase: str) -> int | None:
        """The registered size of the split ``phase`` uses (None: not registered, 0)."""
        size = self.train if phase == "train" else self.val
        return size if size > 0 else None


@dataclass
class SiteRegistry:
    by_node: dict[int, SiteEntry]
    by_site: dict[str, SiteEntry]
    keyed_by_node: bool  # True: deployment (node ids are authoritative)

    @classmethod
    def by_name(cls, sizes: dict[str, dict[str, int]]) -> SiteRegistry:
        """Simulation: sites known by name, with their split sizes."""
        entries = {
            site: SiteEntry(site, int(s.get("train", 0)), int(s.get("val", 0)))
            for site, s in sizes.items()
        }
        return cls(by_node={}, by_site=entries, keyed_by_node=False)

    @classmethod
    def load(cls, path: str | Path) -> SiteRegistry:
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            nodes = {
                int(node): SiteEntry(
                    str(e["site"]),
                    int(e["train"]),
                    int(e["val"]),
                    str(e.get("public_key_sha256", "")),
                )
                for node, e in doc["nodes"].items()
            }
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RegistryError(
                f"{path}: not a site registry ({type(exc).__name__}: {exc})"
            ) from None
        sites = [e.site for e in nodes.values()]
        if len(set(sites)) != len(sites):
            raise RegistryError(f"{path}: a site is registered under two node ids")
        return cls(nodes, {e.site: e for e in nodes.values()}, keyed_by_node=True)

    def identify(self, node_id: int, claimed: str) -> tuple[SiteEntry | None, str]:
        """(the sender's entry, "") or (None, why the reply is not accepted)."""
        if self.keyed_by_node:
            entry = self.by_node.get(int(node_id))
            if entry is None:
                return None, f"node {node_id} is not in the site registry"
            if claimed != entry.site:
                return (
                    None,
                    f"node {node_id} is registered as {entry.site!r} but claims {claimed!r}",
                )
            return entry, ""
        entry = self.by_site.get(claimed)
        if entry is None:
            return None, f"unknown site {claimed!r}"
        return entry, ""


def register_site(
    path: str | Path, node_id: int, site: str, train: int, val: int, public_key_sha256: str = ""
) -> SiteEntry:
    """Add (or confirm) one entry of the coordinator's registry file, written atomically."""
    path = Path(path)
    doc = {"nodes": {}}
    if path.exists():
        doc = json.loads(path.read_text(encoding="utf-8"))
    for node, e in doc["nodes"].items():
        if e["site"] == site and int(node) != int(node_id):
            raise RegistryError(f"{path}: site {site!r} is already registered as node {node}")
    entry = SiteEntry(site, int(train), int(val), public_key_sha256)
    doc["nodes"][str(int(node_id))] = asdict(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return entry


def lookup_site(path: str | Path, site: str) -> tuple[int, SiteEntry] | None:
    """(node id, entry) of ``site`` in a registry file, or None."""
    path = Path(path)
    if not path.exists():
        return None
    registry = SiteRegistry.load(path)
    for node, entry in registry.by_node.items():
        if entry.site == site:
            return node, entry
    return None
