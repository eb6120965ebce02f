"""Flower's own strategies, extended only through the narrow hooks (configure_*, aggregate_*).

``ProjectHooks`` sits in front of any Flower strategy class and adds, without touching ``start()``:
- downlink encoding of the broadcast and byte counts per destination node;
- a bounded wait for nodes: a round needs ``fl.min_available_nodes`` connected nodes and waits
  for them at most ``fl.round_timeout`` (Flower's own sampling would wait forever), then is skipped;
- every reply checked before the strategy sees it (``fl.replies``): the sender must be the site
  the registry says its node is (or, in simulation, a known site replying once), metric names
  whitelisted, ``num-examples`` a whole number >= 1 capped at the registered split size, tensors
  complete, well-shaped, float32, finite and decodable; anything else is dropped and logged with
  the site's name (Flower would raise ``InconsistentMessageReplies`` and end the run);
- optional update-norm clipping (``fl.clip_norm``) with Flower's clipping function;
- no aggregate from fewer than ``fl.min_sites`` usable replies (training and evaluation), so no
  aggregate is one or two sites' own update;
- client-level DP (``privacy.client``) through Flower's wrappers behind these hooks (``fl.dp``);
- the strategy's own aggregation guarded (``fl.robust``): an exception is traced to the reply that
  causes it (leave-one-out), which is dropped with the site named; an aggregate or optimizer state
  with NaN/Inf is dropped and logged, and the strategy state (FedAdam's ``m_t``/``v_t``) restored;
- float32 output (FedAdam/FedYogi promote to float64, which would double the download);
- a round offset, so a resumed run continues its round numbering;
- deterministic aggregation order (by site name), so resumed and uninterrupted runs match.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)

from fedprostate.compress import delta
from fedprostate.compress.codecs import CodecSpec
from fedprostate.config import STRATEGIES, ConfigError, RunConfig
from fedprostate.fl import robust, sampling, wire
from fedprostate.fl.dp import NORM_BIT, DPStrategy, make_wrapper
from fedprostate.fl.ledger import NodesSnapshot, RoundLedger
from fedprostate.fl.registry import SiteRegistry
from fedprostate.fl.replies import (
    EVALUATE_METRICS,
    TRAIN_METRICS,
    checked_count,
    decode_update,
    metrics_problem,
)

log = logging.getLogger("fedprostate.server")

REPORT_KEY = wire.REPORT_KEY


class ProjectHooks:
    """Mixin: put it before a Flower strategy in the bases (``class X(ProjectHooks, FedAdam)``)."""

    min_sites = 1  # make_strategy sets fl.min_sites
    train_metrics: frozenset[str] = TRAIN_METRICS  # what a training reply carries (whitelist)

    def attach(
        self,
        shapes: dict[str, tuple[int, ...]],
        downlink: str,
        seed: int,
        foundation_sha: str,
        round_offset: int = 0,
        registry: SiteRegistry | None = None,
        node_wait: float = 3600.0,
        clip_norm: float = 0.0,
        min_sites: int | None = None,
    ) -> None:
        self.shapes = shapes
        self.downlink = CodecSpec.parse(downlink)
        self.seed = seed
        self.foundation_sha = foundation_sha
        self.round_offset = round_offset
        self.ledger = RoundLedger()
        self.reference: dict[str, np.ndarray] = {}
        self.registry = registry
        self.node_wait = node_wait
        self.site_order = sampling.SiteOrder(registry, node_wait)
        self.clip_norm = clip_norm
        if min_sites is not None:
            self.min_sites = min_sites
        dp_mode = getattr(self, "dp_mode", "off")
        self.equal_weights = dp_mode != "off"  # DP noise is calibrated to the plain mean
        self.train_metrics = TRAIN_METRICS | (
            {NORM_BIT} if dp_mode == "client-adaptive" else frozenset()
        )

    # ---- cooperative extension points (``fl.dp.DPStrategy`` behind these hooks) --------
    def after_broadcast(self, reference: dict[str, np.ndarray]) -> None:
        parent = getattr(super(), "after_broadcast", None)
        if parent is not None:
            parent(reference)

    def reclip_norm(self) -> float:
        parent = getattr(super(), "reclip_norm", None)
        return parent() if parent is not None else self.clip_norm

    def _too_few(self, server_round: int, n: int, phase: str) -> bool:
        if n >= self.min_sites:
            return False
        note = (
            f"round {server_round}: {phase} not aggregated: {n} usable repl"
            f"{'y' if n == 1 else 'ies'}, fewer than fl.min_sites = {self.min_sites}"
        )
        log.warning(note)
        self.ledger.notes.append(note)
        return True

    # ---- sampling ------------------------------------------------------------------------
    def _nodes_or_skip(self, grid, needed: int, server_round: int, phase: str):
        """The grid with a fixed node list once ``needed`` nodes are connected; None after
        ``node_wait`` seconds without them (the round's ``phase`` is then skipped)."""
        deadline = time.monotonic() + self.node_wait
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= needed:
                return NodesSnapshot(grid, nodes)
            if time.monotonic() >= deadline:
                note = (
                    f"round {server_round}: {phase} skipped: {len(nodes)} node(s) connected, "
                    f"{needed} needed (fl.min_available_nodes, fl.min_sites), waited {self.node_wait:.0f} s"
                )
                log.warning(note)
                self.ledger.notes.append(note)
                return None
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def _for_sampling(self, grid: NodesSnapshot, fraction: float, least: int) -> NodesSnapshot:
        """The snapshot ordered by site name when the round leaves a node out (fl.sampling)."""
        nodes = grid.get_node_ids()
        if not sampling.subsamples(len(nodes), fraction, least):
            return grid
        ordered = NodesSnapshot(grid, self.site_order(grid, nodes))
        if self.site_order.asked:  # the site query's messages are counted too
            self.ledger.extra["site_query"] = self.site_order.asked
        return ordered

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
        needed = max(self.min_available_nodes, self.min_train_nodes)
        if (grid := self._nodes_or_skip(grid, needed, server_round, "training")) is None:
            return []
        grid = self._for_sampling(grid, self.fraction_train, self.min_train_nodes)
        with sampling.seeded(self.seed, server_round, "train"):
            messages = list(super().configure_train(server_round, arrays, config, grid))
        out = self._broadcast(messages, arrays, server_round, self.ledger.down)
        self.after_broadcast(self.reference)
        return out

    def configure_evaluate(self, server_round, arrays, config, grid) -> Iterable[Message]:
        server_round += self.round_offset
        if self.fraction_evaluate == 0.0:
            return []
        needed = max(self.min_available_nodes, self.min_evaluate_nodes)
        if (grid := self._nodes_or_skip(grid, needed, server_round, "evaluation")) is None:
            return []
        grid = self._for_sampling(grid, self.fraction_evaluate, self.min_evaluate_nodes)
        with sampling.seeded(self.seed, server_round, "evaluate"):
            messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        # Evaluation uses the same wire format as training: reference stays consistent.
        saved = dict(self.reference)
        out = self._broadcast(messages, arrays, server_round, self.ledger.down_evaluate)
        self.reference = saved
        return out

    # ---- replies -------------------------------------------------------------------------
    def _claimed_site(self, msg: Message) -> str:
        if msg.has_content() and REPORT_KEY in msg.content.config_records:
            return str(msg.content.config_records[REPORT_KEY].get("site", "?"))
        return f"node {msg.metadata.src_node_id}"

    def _site_of(self, msg: Message) -> str:
        """The sender's name for logs: the registered site of its node where there is one."""
        entry = self.registry.by_node.get(msg.metadata.src_node_id) if self.registry else None
        return entry.site if entry is not None else self._claimed_site(msg)

    def _decode(self, msg: Message) -> tuple[dict[str, np.ndarray] | None, str]:
        content = msg.content
        if len(content.array_records) != 1:
            return None, "reply must hold exactly one ArrayRecord"
        report = content.config_records.get(REPORT_KEY, ConfigRecord())
        received = wire.from_record(next(iter(content.array_records.values())))
        return decode_update(
            received, str(report.get("codec", "fp32")), self.shapes, self.reference
        )

    def _admit(self, msg: Message, phase: str, seen: set[str]) -> tuple[dict | None, str]:
        """Identity, metric names and counts of one reply: (accepted fields, "") or (None, why)."""
        if msg.has_error():
            return None, f"error reply: {msg.error.reason}"
        content = msg.content
        if len(content.metric_records) != 1:
            return None, "reply must hold exactly one MetricRecord"
        claimed = self._claimed_site(msg)
        cap = None
        if self.registry is not None:
            entry, why = self.registry.identify(msg.metadata.src_node_id, claimed)
            if entry is None:
                return None, why
            cap = entry.cap(phase)
        if claimed in seen:
            return None, f"a second reply claiming site {claimed!r} in this round"
        metrics = next(iter(content.metric_records.values()))
        why = metrics_problem(metrics, self.train_metrics if phase == "train" else EVALUATE_METRICS)
        if why:
            return None, why
        n, why, capped = checked_count(metrics["num-examples"], cap)
        if why:
            return None, why
        values = {k: _scalar(v) for k, v in metrics.items()}
        if capped:
            values["num-examples-claimed"] = values["num-examples"]
            note = f"num-examples {metrics['num-examples']!r} capped at the registered {n}"
            log.warning("reply from site %s: %s", claimed, note)
        values["num-examples"] = float(n)
        seen.add(claimed)
        return {"site": claimed, "metrics": values, "n": n}, ""

    def _reject(
        self, server_round: int, msg: Message, reason: str, phase: str, site: str = ""
    ) -> None:
        site = site or self._site_of(msg)
        log.warning(
            "round %d: %s reply from site %s rejected: %s", server_round, phase, site, reason
        )
        self.ledger.rejected.append(
            {"site": site, "node": msg.metadata.src_node_id, "phase": phase, "reason": reason}
        )

    def aggregate_train(
        self, server_round, replies
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        accepted: list[dict] = []
        seen: set[str] = set()
        for msg in replies:
            admitted, reason = self._admit(msg, "train", seen)
            decoded = None
            if admitted is not None:
                decoded, reason = self._decode(msg)
            if reason:
                if admitted is not None:
                    seen.discard(admitted["site"])
                self._reject(server_round, msg, reason, "train")
                continue
            node = msg.metadata.src_node_id
            up_bytes = next(iter(msg.content.array_records.values())).count_bytes()
            report = msg.content.config_records.get(REPORT_KEY, ConfigRecord())
            entry = {
                **admitted["metrics"],
                "site": admitted["site"],
                "node": node,
                "codec": str(report.get("codec", "fp32")),
                "bytes_up": up_bytes,
                "bytes_down": self.ledger.down.get(node, 0),
            }
            if (clip := self.reclip_norm()) > 0:
                decoded, norm = robust.clip_update(decoded, self.reference, clip)
                entry["update_norm"] = norm
                entry["clipped"] = norm > clip
            accepted.append({"msg": msg, "entry": entry, "tensors": decoded})
        accepted.sort(key=lambda item: item["entry"]["site"])
        if not accepted:
            log.warning("round %d: no usable replies; the global model is kept", server_round)
            return None, None
        if self._too_few(server_round, len(accepted), "training"):
            return None, None
        order = list(self.reference) or None  # Flower's DP wrappers pair tensors by position

        def run(items: list[dict]):
            for item in items:  # fresh records each attempt: strategies may consume them
                values = {k: v for k, v in item["entry"].items() if k in self.train_metrics}
                if self.equal_weights:
                    values["num-examples"] = 1.0
                metrics = MetricRecord(values)
                tensors = item["tensors"]
                arrays = wire.to_record({k: tensors[k] for k in order or tensors})
                item["msg"].content = RecordDict({"arrays": arrays, "metrics": metrics})
            return super(ProjectHooks, self).aggregate_train(
                server_round, [i["msg"] for i in items]
            )

        (arrays, metrics), kept = self._guarded(server_round, accepted, run, "train")
        self.ledger.clients.extend(item["entry"] for item in kept)
        if arrays is not None:
            arrays = wire.to_record(
                {k: v.astype(np.float32) for k, v in wire.from_record(arrays).items()}
            )
        return arrays, metrics

    def _guarded(self, server_round: int, items: list[dict], run: Callable, phase: str):
        """``robust.guarded_aggregate`` with this round's rejections and notes recorded."""

        def reject(item: dict, reason: str) -> None:
            self._reject(server_round, item["msg"], reason, phase, item["entry"]["site"])

        def note(text: str) -> None:
            log.warning("round %d: %s", server_round, text)
            self.ledger.notes.append(f"round {server_round}: {text}")

        return robust.guarded_aggregate(self, items, run, phase == "train", reject, note)

    def aggregate_evaluate(self, server_round, replies) -> MetricRecord | None:
        server_round += self.round_offset
        accepted: list[dict] = []
        seen: set[str] = set()
        for msg in replies:
            admitted, reason = self._admit(msg, "evaluate", seen)
            if reason:
                self._reject(server_round, msg, reason, "evaluate")
                self.ledger.evaluation.append({"site": self._site_of(msg), "error": reason})
                continue
            entry = {**admitted["metrics"], "site": admitted["site"]}
            accepted.append({"msg": msg, "entry": entry})
        accepted.sort(key=lambda item: item["entry"]["site"])
        if not accepted or self._too_few(server_round, len(accepted), "evaluation"):
            return None

        def run(items: list[dict]):
            for item in items:
                metrics = {k: v for k, v in item["entry"].items() if k in EVALUATE_METRICS}
                item["msg"].content = RecordDict({"metrics": MetricRecord(metrics)})
            return super(ProjectHooks, self).aggregate_evaluate(
                server_round, [i["msg"] for i in items]
            )

        out, kept = self._guarded(server_round, accepted, run, "evaluate")
        self.ledger.evaluation.extend(item["entry"] for item in kept)
        self.ledger.evaluated = dict(out) if out is not None else {}
        return out

    # ---- resume --------------------------------------------------------------------------
    def optimizer_state(self) -> dict[str, np.ndarray]:
        out = {}
        for slot in ("m_t", "v_t"):
            for k, v in (getattr(self, slot, None) or {}).items():
                out[f"{slot}/{k}"] = np.asarray(v)
        if getattr(self, "dp", None) is not None:  # adaptive clipping's current norm
            out["dp/clipping_norm"] = np.asarray(self.dp.clipping_norm, dtype=np.float64)
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        for slot in ("m_t", "v_t"):
            values = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(slot + "/")}
            if values and hasattr(self, slot):
                setattr(self, slot, values)
        if "dp/clipping_norm" in state and getattr(self, "dp", None) is not None:
            self.dp.clipping_norm = float(state["dp/clipping_norm"])


def _scalar(value):
    return float(value) if isinstance(value, int | float) else value


_BASES = {
    "fedavg": FedAvg,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedprox": FedProx,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
}
if set(_BASES) != set(STRATEGIES):  # config.STRATEGIES is what a configuration may name
    raise ImportError(
        f"config.STRATEGIES and _BASES differ: {sorted(set(_BASES) ^ set(STRATEGIES))}"
    )


def make_strategy(cfg: RunConfig, num_clients: int) -> ProjectHooks:
    """The configured Flower strategy with the project's hooks (not yet attached).

    ``num_clients`` is the number of sites: a Byzantine-robust strategy that cannot work with
    that many (Krum 2f + 3, Bulyan 4f + 3) is refused here, before any round runs.
    """
    fl = cfg.fl
    if num_clients < fl.min_replies():
        raise ConfigError(
            f"fl.strategy = {fl.strategy!r} with fl.num_malicious = {fl.num_malicious} needs at "
            f"least {fl.min_replies()} sites per round; this federation has {num_clients}"
        )
    base = _BASES[fl.strategy]
    private = cfg.privacy.client_level
    bases = (ProjectHooks, DPStrategy, base) if private else (ProjectHooks, base)
    cls = type(f"Project{'DP' if private else ''}{base.__name__}", bases, {})
    # Flower samples max(fraction x nodes, min_train_nodes): never fewer than fl.min_sites.
    least = min(max(fl.min_train_nodes, fl.min_sites), num_clients)
    common = dict(
        fraction_train=fl.fraction_train,
        fraction_evaluate=fl.fraction_evaluate,
        min_train_nodes=least,
        min_evaluate_nodes=least,
        min_available_nodes=min(max(fl.min_available_nodes, least), num_clients),
    )
    if fl.strategy in ("fedadam", "fedyogi", "fedadagrad"):
        opt = dict(eta=fl.server_lr, eta_l=cfg.train.lr, tau=fl.tau)
        if fl.strategy != "fedadagrad":
            opt.update(beta_1=fl.beta_1, beta_2=fl.beta_2)
        return cls(**common, **opt)
    extra: dict = {
        "fedprox": {"proximal_mu": cfg.train.prox_mu},
        "fedtrimmedavg": {"beta": fl.trim_beta},
        "krum": {"num_malicious_nodes": fl.num_malicious},
        "multikrum": {
            "num_malicious_nodes": fl.num_malicious,
            "num_nodes_to_select": fl.krum_select or max(1, num_clients - fl.num_malicious),
        },
        "bulyan": {"num_malicious_nodes": fl.num_malicious},
    }.get(fl.strategy, {})
    strategy = cls(**common, **extra)
    strategy.min_sites = fl.min_sites
    if private:  # the wrapper holds its own plain instance of the same Flower strategy
        strategy.dp = make_wrapper(cfg, base(**common, **extra), num_clients)
        strategy.dp_mode = cfg.privacy.client
    return strategy
