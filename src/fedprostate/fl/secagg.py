"""The server's SecAgg+ path (``fl.secure_aggregation``): Flower's legacy workflow, nothing copied.

Flower 1.42 runs SecAgg+ only through its legacy stack: ``DefaultWorkflow(fit_workflow=
SecAggPlusWorkflow(...))`` over a ``LegacyContext`` holding a legacy ``flwr.server.strategy``.
This module supplies exactly that and plugs it into ``fl.server.run_server`` in place of
``Strategy.start``: the same ``evaluate_fn`` (benchmark scoring, metrics line, checkpoint) runs
after every round, the same ledger feeds ``metrics.jsonl``, the same registry identifies senders.

Per round the sites go through four stages (setup, share keys, collect masked vectors, unmask);
a site trains in the third and sends only ``[w, w * tensors]`` quantized to integers and masked
with pairwise and private masks. The server adds the masked vectors, removes the masks with the
key shares of the survivors (a site that dropped after sharing its keys is unmasked from its
neighbours' shares) and only then holds anything in the clear: the weighted mean. So it never
holds one site's update, and what it can still check per site is only what the site reports in
plain text (its metrics and weight). Consequences, documented: a reply that fails admission
drops the whole round (it cannot be taken out of the sum); robust aggregation and server-side
clipping are impossible (refused by the configuration); DP noise, when on, is added to the mean
by Flower's legacy client-side-clipping wrapper (the sites clip).

Quantization: each site scales by w / max_weight (w = num-examples, 1 under DP) and rounds
stochastically to ``quantization_range`` levels over [-clip_range, clip_range]; the unmasked mean
then differs from plain FedAvg by at most :func:`tolerance` per element.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict

import numpy as np
from flwr.app import ArrayRecord, Context, RecordDict
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping as LegacyClientFixed
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from fedprostate.config import RunConfig
from fedprostate.fl import sampling, wire
from fedprostate.fl.inproc import content_bytes
from fedprostate.fl.ledger import RoundLedger
from fedprostate.fl.registry import SiteRegistry
from fedprostate.fl.replies import TRAIN_METRICS, checked_count, metrics_problem

log = logging.getLogger("fedprostate.server")

CLIP_RANGE = 8.0  # SecAgg+ clips every transmitted value to [-8, 8] before quantizing
QUANT_RANGE = 2**22  # Flower's default levels over that range
MOD_RANGE = 2**32


def tolerance(weights: list[float], max_weight: float, max_abs: float) -> float:
    """Largest per-element difference between SecAgg+'s mean and exact FedAvg: stochastic
    rounding (< 1 level per site) and the rounding of each weight ratio to 1 / QUANT_RANGE."""
    ratios = [w / max_weight for w in weights]
    level = 2 * CLIP_RANGE / QUANT_RANGE
    n = len(weights)
    return (level * n + max_abs * n / QUANT_RANGE) / sum(ratios)


class CountingGrid:
    """A Grid proxy that counts every message's bytes per node (all four SecAgg+ stages)."""

    def __init__(self, grid, ledger: RoundLedger):
        self._grid, self.ledger = grid, ledger
        self.up: dict[int, int] = defaultdict(int)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.ledger.down[node] = self.ledger.down.get(node, 0) + content_bytes(msg.content)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_content():
                self.up[reply.metadata.src_node_id] += content_bytes(reply.content)
        return replies

    def __getattr__(self, name):
        return getattr(self._grid, name)


class SecAggFedAvg(LegacyFedAvg):
    """Flower's legacy FedAvg with the project's round bookkeeping (no aggregation of its own:
    every result already holds SecAgg+'s unmasked mean)."""

    def __init__(self, server, names: list[str], evaluate_fn, **kwargs):
        super().__init__(**kwargs)
        self.server, self.names, self.run_evaluate = server, names, evaluate_fn

    def configure_fit(self, server_round, parameters, client_manager):
        # the legacy sampler, as the strategies' (fl.sampling): seeded by the absolute round,
        # over the nodes ordered by site name, so a resumed run samples the same sites
        absolute = server_round + self.server.round_offset
        ordered = _SiteOrderedClients(client_manager, self.server)
        with sampling.seeded(self.server.seed, absolute, "train"):
            pairs = super().configure_fit(server_round, parameters, ordered)
        for _, fitins in pairs[:1]:  # one FitIns object is shared by every site
            fitins.config.update(
                {
                    "server-round": server_round + self.server.round_offset,
                    "downlink": "fp32",
                    "foundation-sha256": self.server.foundation_sha,
                }
            )
        for proxy, _ in pairs:
            self.server.ledger.down.setdefault(proxy.node_id, 0)
        return pairs

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []  # evaluation is the server's (simulation) or the sites' val-auroc (training)

    def aggregate_fit(self, server_round, results, failures):
        server_round += self.server.round_offset
        return self.server.record_round(server_round, results, failures)

    def evaluate(self, server_round, parameters):
        arrays = dict(zip(self.names, parameters_to_ndarrays(parameters), strict=True))
        out = self.run_evaluate(server_round, wire.to_record(_float32(arrays)))
        return (float(out.get("val-loss", 0.0)), dict(out)) if out is not None else None


class _SiteOrderedClients:
    """The legacy client manager, sampling over its nodes in site-name order."""

    def __init__(self, manager, server):
        self._manager, self._server = manager, server

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        self._manager.wait_for(min_num_clients or num_clients)
        by_node = {int(p.node_id): p for p in self._manager.all().values()}
        if num_clients > len(by_node):
            return []
        nodes = sorted(by_node)
        if num_clients < len(nodes):  # who is left out depends on the order
            nodes = self._server.site_order(self._server.raw_grid, nodes)
            if self._server.site_order.asked:  # the site query's messages are counted too
                self._server.ledger.extra["site_query"] = self._server.site_order.asked
        return [by_node[n] for n in random.sample(nodes, num_clients)]

    def __getattr__(self, name):
        return getattr(self._manager, name)


class _ClientFixedOverSum(LegacyClientFixed):
    """Flower's legacy client-side-clipping DP wrapper, noise scaled to the m sites SecAgg+
    summed (Flower scales to the number sampled, and drops the round on any failure although
    the sum already excludes failed sites)."""

    def aggregate_fit(self, server_round, results, failures):
        self.num_sampled_clients = max(1, len(results))
        return super().aggregate_fit(server_round, results, [])


class SecAggServer:
    """What ``run_server`` needs from a strategy (ledger, optimizer state, ``start``), for the
    legacy SecAgg+ workflow."""

    def __init__(self, cfg: RunConfig, num_clients: int, max_weight: float):
        self.cfg, self.num_clients = cfg, num_clients
        self.max_weight = max(1.0, float(max_weight))
        self.ledger = RoundLedger()
        self.round_offset, self.foundation_sha = 0, ""
        self.registry: SiteRegistry | None = None
        self.grid: CountingGrid | None = None
        self.raw_grid = None  # the run's Grid (start), for the site query of the sampler
        self.seed, self.site_order = 0, sampling.SiteOrder()

    def attach(self, shapes, downlink, seed, foundation_sha, round_offset=0, registry=None, **kw):
        self.names = sorted(shapes)
        self.seed = seed
        self.site_order = sampling.SiteOrder(registry, kw.get("node_wait", 600.0))
        self.foundation_sha, self.round_offset, self.registry = (
            foundation_sha,
            round_offset,
            registry,
        )

    def optimizer_state(self) -> dict[str, np.ndarray]:
        return {}  # FedAvg keeps no server state

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        pass

    def record_round(self, server_round: int, results, failures):
        """Ledger entries of the sites in the sum; the sum itself only if all are admissible."""
        for failure in failures:
            self.ledger.rejected.append(
                {"site": "?", "node": None, "phase": "train", "reason": str(failure)[:200]}
            )
        entries, problems = [], []
        for proxy, fitres in results:
            metrics = dict(fitres.metrics)
            claimed = str(metrics.pop("site", f"node {proxy.node_id}"))
            why = ""
            if self.registry is not None:
                entry, why = self.registry.identify(proxy.node_id, claimed)
            why = why or metrics_problem(metrics, TRAIN_METRICS) or ""
            n, count_why, _ = checked_count(fitres.num_examples, None)
            why = why or count_why
            if why:
                problems.append(f"site {claimed}: {why}")
                continue
            entries.append(
                {
                    **{k: float(v) for k, v in metrics.items()},
                    "num-examples": float(n),
                    "site": claimed,
                    "node": proxy.node_id,
                    "codec": "secagg+",
                    "bytes_up": self.grid.up.pop(proxy.node_id, 0) if self.grid else 0,
                    "bytes_down": self.ledger.down.get(proxy.node_id, 0),
                }
            )
        if self.grid is not None:
            self.grid.up.clear()
        min_sites = self.cfg.fl.min_sites
        if problems or len(entries) < min_sites:
            why = "; ".join(problems) or f"{len(entries)} sites in the sum < fl.min_sites"
            note = f"round {server_round}: SecAgg+ sum dropped ({why})"
            log.warning(note)
            self.ledger.notes.append(note)
            return None, {}
        self.ledger.clients.extend(sorted(entries, key=lambda e: e["site"]))
        self.ledger.extra["secagg"] = {"sites_in_sum": len(entries), "dropped": len(failures)}
        mean = parameters_to_ndarrays(results[0][1].parameters)  # every result holds the mean
        return ndarrays_to_parameters([np.asarray(a, np.float32) for a in mean]), {}

    def start(self, grid, initial_arrays: ArrayRecord, num_rounds: int, timeout: float, **kw):
        """Run ``num_rounds`` SecAgg+ rounds; returns the final tensors (``.arrays`` record)."""
        evaluate_fn = kw["evaluate_fn"]
        arrays = wire.from_record(initial_arrays)
        least = min(max(self.cfg.fl.min_train_nodes, self.cfg.fl.min_sites, 3), self.num_clients)
        strategy = SecAggFedAvg(
            self,
            self.names,
            evaluate_fn,
            fraction_fit=self.cfg.fl.fraction_train,
            fraction_evaluate=0.0,
            min_fit_clients=least,
            min_available_clients=least,
            initial_parameters=ndarrays_to_parameters([arrays[k] for k in self.names]),
        )
        p = self.cfg.privacy
        if p.client == "client-fixed":
            strategy = _ClientFixedOverSum(
                strategy,
                noise_multiplier=p.noise_multiplier,
                clipping_norm=p.clip_norm,
                num_sampled_clients=least,
            )
        self.grid, self.raw_grid = CountingGrid(grid, self.ledger), grid
        context = LegacyContext(
            context=Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            config=ServerConfig(num_rounds=num_rounds, round_timeout=timeout),
            strategy=strategy,
        )
        workflow = SecAggPlusWorkflow(
            num_shares=1.0,  # every sampled site holds a share of every other's keys
            reconstruction_threshold=self.cfg.fl.secagg_threshold,
            max_weight=self.max_weight,
            clipping_range=CLIP_RANGE,
            quantization_range=QUANT_RANGE,
            modulus_range=MOD_RANGE,
            timeout=timeout,
        )
        DefaultWorkflow(fit_workflow=workflow)(self.grid, context)
        final = context.state.array_records[MAIN_PARAMS_RECORD]
        tensors = dict(zip(self.names, final.to_numpy_ndarrays(), strict=True))
        return _Result(wire.to_record(_float32(tensors)))


class _Result:
    def __init__(self, arrays: ArrayRecord):
        self.arrays = arrays


def _float32(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
