"""Flower's own strategies, extended only through the narrow hooks (configure_*, aggregate_*).

``ProjectHooks`` sits in front of any Flower strategy class and adds, without touching ``start()``:
- downlink encoding of the broadcast and byte counts per destination node;
- uplink decoding of each reply into full tensors *before* the strategy aggregates (so FedAdam's
  pseudo-gradient sees real tensors), with replies that are malformed (missing/extra tensors,
  wrong shape or dtype, NaN/Inf, undecodable) filtered out and logged with the site's name —
  otherwise Flower raises ``InconsistentMessageReplies`` and ends the run;
- float32 output (FedAdam/FedYogi promote to float64, which would double the download);
- a round offset, so a resumed run continues its round numbering;
- deterministic aggregation order (by site name), so resumed and uninterrupted runs match.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedProx, FedYogi

from fedprostate.compress import delta
from fedprostate.compress.codecs import CodecSpec
from fedprostate.config import STRATEGIES, RunConfig
from fedprostate.fl import wire

log = logging.getLogger("fedprostate.server")

REPORT_KEY = "report"  # ConfigRecord in each reply: site name and codec (no patient data)


@dataclass
class RoundLedger:
    """What happened in the current round, per client, filled by the hooks, read by the recorder."""

    down: dict[int, int] = field(default_factory=dict)  # node id → bytes broadcast (train)
    clients: list[dict] = field(default_factory=list)  # accepted train replies
    rejected: list[dict] = field(default_factory=list)  # filtered replies and their reasons
    evaluation: list[dict] = field(default_factory=list)  # federated evaluation per site

    def pop(self) -> dict:
        out = {"clients": self.clients, "rejected": self.rejected, "fed_eval": self.evaluation}
        self.down, self.clients, self.rejected, self.evaluation = {}, [], [], []
        return out


class ProjectHooks:
    """Mixin: put it before a Flower strategy in the bases (``class X(ProjectHooks, FedAdam)``)."""

    def attach(
        self,
        shapes: dict[str, tuple[int, ...]],
        downlink: str,
        seed: int,
        foundation_sha: str,
        round_offset: int = 0,
    ) -> None:
        self.shapes = shapes
        self.downlink = CodecSpec.parse(downlink)
        self.seed = seed
        self.foundation_sha = foundation_sha
        self.round_offset = round_offset
        self.ledger = RoundLedger()
        self.reference: dict[str, np.ndarray] = {}

    # ---- broadcast -----------------------------------------------------------------------
    def _broadcast(
        self,
        messages: list[Message],
        arrays: ArrayRecord,
        server_round: int,
        count_into: dict[int, int] | None,
    ) -> list[Message]:
        global_np = wire.from_record(arrays)
        # Seeded by the round, so a resumed run broadcasts exactly the same bytes.
        rng = np.random.default_rng([self.seed, server_round])
        packed = delta.pack_downlink(global_np, self.downlink, rng)
        self.reference = delta.unpack_downlink(packed, self.downlink, self.shapes)
        record = wire.to_record(packed)
        for msg in messages:
            msg.content["arrays"] = record
            cfg = msg.content["config"]
            cfg["server-round"] = server_round
            cfg["downlink"] = str(self.downlink)
            cfg["foundation-sha256"] = self.foundation_sha
            if count_into is not None:
                count_into[msg.metadata.dst_node_id] = record.count_bytes()
        return messages

    # Every hook sees the run's absolute round (FedAdam's bias correction depends on it), so a
    # resumed run with `round_offset` completed rounds behaves exactly like an uninterrupted one.
    def configure_train(self, server_round, arrays, config, grid) -> Iterable[Message]:
        server_round += self.round_offset
        messages = list(super().configure_train(server_round, arrays, config, grid))
        return self._broadcast(messages, arrays, server_round, self.ledger.down)

    def configure_evaluate(self, server_round, arrays, config, grid) -> Iterable[Message]:
        server_round += self.round_offset
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        # Evaluation uses the same wire format as training: reference stays consistent.
        saved = dict(self.reference)
        out = self._broadcast(messages, arrays, server_round, None)
        self.reference = saved
        return out

    # ---- replies -------------------------------------------------------------------------
    def _site_of(self, msg: Message) -> str:
        if msg.has_content() and REPORT_KEY in msg.content.config_records:
            return str(msg.content.config_records[REPORT_KEY].get("site", "?"))
        return f"node {msg.metadata.src_node_id}"

    def _decode(self, msg: Message) -> tuple[dict[str, np.ndarray] | None, str]:
        content = msg.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return None, "reply must hold exactly one ArrayRecord and one MetricRecord"
        metrics = next(iter(content.metric_records.values()))
        n = metrics.get("num-examples")
        if not isinstance(n, int | float) or not np.isfinite(n) or n <= 0:
            return None, f"bad num-examples {n!r}"
        report = content.config_records.get(REPORT_KEY, ConfigRecord())
        codec_text = str(report.get("codec", "fp32"))
        received = wire.from_record(next(iter(content.array_records.values())))
        try:
            spec = CodecSpec.parse(codec_text)
            if delta.is_raw(spec):
                reason = wire.check_tensors(received, self.shapes)
                if reason:
                    return None, reason
            decoded = delta.unpack_uplink(received, spec, self.reference)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            return None, f"undecodable {codec_text} update: {exc}"
        decoded = {k: np.asarray(v) for k, v in decoded.items()}
        reason = wire.check_tensors(decoded, self.shapes)
        return (None, reason) if reason else (decoded, "")

    def aggregate_train(
        self, server_round, replies
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        accepted: list[tuple[str, Message]] = []
        for msg in replies:
            site = self._site_of(msg)
            node = msg.metadata.src_node_id
            if msg.has_error():
                reason = f"error reply: {msg.error.reason}"
            else:
                up_bytes = (
                    next(iter(msg.content.array_records.values())).count_bytes()
                    if msg.content.array_records
                    else 0
                )
                decoded, reason = self._decode(msg)
            if reason:
                log.warning(
                    "round %d: reply from site %s rejected: %s",
                    server_round,
                    site,
                    reason,
                )
                self.ledger.rejected.append({"site": site, "node": node, "reason": reason})
                continue
            metrics = next(iter(msg.content.metric_records.values()))
            report = msg.content.config_records.get(REPORT_KEY, ConfigRecord())
            self.ledger.clients.append(
                {
                    "site": site,
                    "node": node,
                    "codec": str(report.get("codec", "fp32")),
                    "bytes_up": up_bytes,
                    "bytes_down": self.ledger.down.get(node, 0),
                    **{k: _scalar(v) for k, v in metrics.items()},
                }
            )
            msg.content = RecordDict({"arrays": wire.to_record(decoded), "metrics": metrics})
            accepted.append((site, msg))
        accepted.sort(key=lambda item: item[0])
        if not accepted:
            log.warning(
                "round %d: no usable replies; the global model is kept",
                server_round,
            )
            return None, None
        arrays, metrics = super().aggregate_train(server_round, [m for _, m in accepted])
        if arrays is not None:
            arrays = wire.to_record(
                {k: v.astype(np.float32) for k, v in wire.from_record(arrays).items()}
            )
        return arrays, metrics

    def aggregate_evaluate(self, server_round, replies) -> MetricRecord | None:
        server_round += self.round_offset
        good = []
        for msg in replies:
            if msg.has_error():
                self.ledger.evaluation.append(
                    {"site": self._site_of(msg), "error": msg.error.reason}
                )
                continue
            metrics = next(iter(msg.content.metric_records.values()), None)
            if metrics is None or "num-examples" not in metrics:
                continue
            self.ledger.evaluation.append(
                {"site": self._site_of(msg), **{k: _scalar(v) for k, v in metrics.items()}}
            )
            msg.content = RecordDict({"metrics": metrics})
            good.append(msg)
        return super().aggregate_evaluate(server_round, good) if good else None

    # ---- resume --------------------------------------------------------------------------
    def optimizer_state(self) -> dict[str, np.ndarray]:
        out = {}
        for slot in ("m_t", "v_t"):
            for k, v in (getattr(self, slot, None) or {}).items():
                out[f"{slot}/{k}"] = np.asarray(v)
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        for slot in ("m_t", "v_t"):
            values = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(slot + "/")}
            if values and hasattr(self, slot):
                setattr(self, slot, values)


def _scalar(value):
    return float(value) if isinstance(value, int | float) else value


_BASES = {
    "fedavg": FedAvg,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedprox": FedProx,
}
if set(_BASES) != set(STRATEGIES):  # config.STRATEGIES is what a configuration may name
    raise ImportError(
        f"config.STRATEGIES and _BASES differ: {sorted(set(_BASES) ^ set(STRATEGIES))}"
    )


def make_strategy(cfg: RunConfig, num_clients: int) -> ProjectHooks:
    """The configured Flower strategy with the project's hooks (not yet attached)."""
    base = _BASES[cfg.fl.strategy]
    cls = type(f"Project{base.__name__}", (ProjectHooks, base), {})
    fl = cfg.fl
    common = dict(
        fraction_train=fl.fraction_train,
        fraction_evaluate=fl.fraction_evaluate,
        min_train_nodes=min(fl.min_train_nodes, num_clients),
        min_evaluate_nodes=min(fl.min_train_nodes, num_clients),
        min_available_nodes=min(fl.min_available_nodes, num_clients),
    )
    if cfg.fl.strategy in ("fedadam", "fedyogi", "fedadagrad"):
        opt = dict(eta=fl.server_lr, eta_l=cfg.train.lr, tau=fl.tau)
        if cfg.fl.strategy != "fedadagrad":
            opt.update(beta_1=fl.beta_1, beta_2=fl.beta_2)
        return cls(**common, **opt)
    if cfg.fl.strategy == "fedprox":
        return cls(**common, proximal_mu=cfg.train.prox_mu)
    return cls(**common)
