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
    # The hospital's own limits on evaluation (node config ``eval-splits``, ``max-evals``): the
    # splits it scores for the server and how many evaluation queries it answers per run.
    eval_splits: tuple[str, ...] = ("val",)
    max_evals: int = 0  # 0 = no cap


EVAL_SPLITS = ("train", "val", "test")


def site_limits(node_config: dict) -> tuple[tuple[str, ...], int]:
    """(splits the site evaluates, evaluation queries per run; 0 = no cap) from its node config."""
    text = str(node_config.get("eval-splits", "val"))
    splits = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in splits if s not in EVAL_SPLITS]
    if bad or not splits:
        raise ValueError(
            f"node config eval-splits = {text!r}: choose splits among {', '.join(EVAL_SPLITS)}"
        )
    try:
        cap = int(node_config.get("max-evals", 0))
    except (TypeError, ValueError):
        cap = -1
    if cap < 0:
        raise ValueError(
            f"node config max-evals = {node_config.get('max-evals')!r}: a whole number >= 0"
        )
    return splits, cap


def check_eval_allowed(site: SiteContext, split: str, answered: int) -> None:
    """Refuse an evaluation query the site's node config does not allow (PublicError)."""
    if split not in site.eval_splits:
        raise PublicError(
            f"site {site.name} does not evaluate split {split!r} for the server "
            f"(node config eval-splits = {','.join(site.eval_splits)})"
        )
    if site.max_evals and answered >= site.max_evals:
        raise PublicError(
            f"site {site.name} answered its {site.max_evals} evaluation queries of this run "
            "(node config max-evals)"
        )


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
    splits, cap = site_limits(node_config)
    return SiteContext(
        name=name,
        state_dir=Path(base) / name if base else None,
        uplink=uplink,
        eval_splits=splits,
        max_evals=cap,
    )


def audit_sent(site: SiteContext, msg, phase: str, content=None, error: str = "") -> None:
    """The site's own record of what leaves it: tensor names and bytes, metrics, error text."""
    if site.state_dir is None:
        return
    config = msg.content.config_records.get("config") or msg.content.config_records.get(
        "fitins.config", {}
    )  # "fitins.config": the legacy messages of the SecAgg+ workflow
    fields: dict = {
        "site": site.name,
        "phase": phase,
        "run_id": int(msg.metadata.run_id),
        "round": int(config.get("server-round", msg.metadata.group_id or -1)),
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
