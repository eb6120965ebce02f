"""Who a client is and what leaves it: light enough for a ClientApp process that trains elsewhere.

Nothing here imports torch: a deployment's ClientApp process (one per message in Flower 1.42) that
hands its work to a warm site process (``fl/warm.py``) only needs these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedprostate.config import RunConfig, parse_codec
from fedprostate.records.audit import AUDIT_FILE, AuditLog


class PublicError(ValueError):
    """An error whose message is safe to send to the server (no patient data, no paths)."""


@dataclass(frozen=True)
class SiteContext:
    """Who this client is and where its private things live."""

    name: str
    state_dir: Path | None
    uplink: str  # codec spec text


def site_context(cfg: RunConfig, node_config: dict, run_dir: str) -> SiteContext:
    """Resolve the client's identity from Flower's node config (simulation or deployment)."""
    if "site" in node_config:
        name = str(node_config["site"])
    elif "partition-id" in node_config:
        from fedprostate.engine import setup  # simulation only: reads the crop cache's sites

        names = setup.client_names(cfg)
        pid = int(node_config["partition-id"])
        if pid >= len(names):
            raise ValueError(f"partition-id {pid} but only {len(names)} clients in the partition")
        name = names[pid]
    else:
        raise ValueError("node config needs 'site' (deployment) or 'partition-id' (simulation)")
    if "codec" in node_config:  # the hospital's own choice (deployment node config)
        uplink = str(parse_codec("node config codec", str(node_config["codec"])))
    else:
        uplink = str(cfg.compress.uplink_of(name))
    base = node_config.get("state-dir") or (Path(run_dir) / "client_state" if run_dir else None)
    return SiteContext(name=name, state_dir=Path(base) / name if base else None, uplink=uplink)


def audit_sent(site: SiteContext, msg, phase: str, content=None, error: str = "") -> None:
    """The site's own record of what leaves it: tensor names and bytes, metrics, error text."""
    if site.state_dir is None:
        return
    fields: dict = {
        "site": site.name,
        "phase": phase,
        "run_id": int(msg.metadata.run_id),
        "round": int(msg.content["config"].get("server-round", -1)),
    }
    if error:
        fields["error"] = error
    if content is not None:
        tensors = {
            name: int(arr.numpy().nbytes)
            for record in content.array_records.values()
            for name, arr in record.items()
        }
        fields["tensors"] = tensors
        fields["bytes"] = sum(rec.count_bytes() for rec in content.array_records.values())
        fields["metrics"] = {
            k: v for rec in content.metric_records.values() for k, v in rec.items()
        }
        fields["codec"] = site.uplink if tensors else None
    AuditLog(site.state_dir / AUDIT_FILE).append("reply_sent", **fields)
