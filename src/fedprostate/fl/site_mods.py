"""The chain of Flower mods around a site's training handler, and the order it fixes.

Outermost first (a request passes down the list, the reply passes back up)::

    secaggplus_mod        (fl.secure_aggregation) quantize, mask, share keys  [Flower]
    legacy_fit_layout     (fl.secure_aggregation) fitins.* -> arrays/config -> fitres.*
    codec_mod             decode the downlink; encode the reply in the site's uplink codec
    <privacy mod>         clip (and, for local DP, noise) the update          [Flower]
    handler               train from the decoded global model, reply with full tensors

So on the way out an update is first **clipped** (Flower's ``fixedclipping_mod`` /
``adaptiveclipping_mod``, relative to the decoded global model the site trained from), then
**noised** when DP is local (Flower's ``LocalDpMod``), then **quantized** by the codec and, with
SecAgg+, by SecAgg+'s own fixed-point encoding before masking. Clipping first is what bounds a
site's influence for the server's noise; quantizing after the noise is post-processing (local
DP is kept); quantizing after clipping can move a clipped update by the codec's error, so with a
lossy codec the server clips the decoded update again (``fl.dp``). Server-side noise comes after
the server has decoded and averaged (``fl.dp``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flwr.compat.common.recorddict_compat as compat
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.mod import LocalDpMod, adaptiveclipping_mod, fixedclipping_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from fedprostate.config import RunConfig
from fedprostate.engine import setup
from fedprostate.fl import client, wire
from fedprostate.fl.client import SiteContext, decode_global, encode_reply
from fedprostate.fl.config_io import config_from_context
from fedprostate.fl.site import site_context
from fedprostate.fl.strategies import REPORT_KEY

Handler = Callable[[Message, Context], Message]
Mod = Callable[[Message, Context, Handler], Message]


def run_chain(mods: list[Mod], handler: Handler, msg: Message, context: Context) -> Message:
    """``mods[0](msg, ctx, mods[1](..., handler))``: Flower's own mod semantics."""

    def step(i: int) -> Handler:
        if i == len(mods):
            return handler
        return lambda m, c: mods[i](m, c, step(i + 1))

    return step(0)(msg, context)


def codec_mod(cfg: RunConfig, site: SiteContext) -> Mod:
    """Downlink decoding in, uplink encoding out: the handler and the privacy mods see full
    tensors (the keys Flower's clipping mods compare), the wire sees the codec's."""

    def mod(msg: Message, context: Context, call_next: Handler) -> Message:
        config = msg.content["config"]
        received = wire.from_record(msg.content["arrays"])
        global_tensors = decode_global(cfg, received, str(config.get("downlink", "fp32")))
        msg.content["arrays"] = wire.to_record(global_tensors)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        trained = wire.from_record(next(iter(reply.content.array_records.values())))
        out = encode_reply(cfg, site, int(config["server-round"]), trained, global_tensors)
        content = RecordDict(
            {
                "arrays": wire.to_record(out),
                "metrics": next(iter(reply.content.metric_records.values())),
                REPORT_KEY: ConfigRecord({"site": site.name, "codec": site.uplink}),
            }
        )
        return Message(content=content, reply_to=msg)

    return mod


def local_dp_mod(cfg: RunConfig) -> LocalDpMod:
    """Flower's LocalDpMod with noise std ``z * 2C``: a site's clipped update can move anywhere in
    the C-ball (sensitivity 2C). LocalDpMod takes (epsilon, delta) of the classic Gaussian
    mechanism, std = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon; the epsilon passed is the
    one that gives that std (the run's epsilon comes from the accountant, not from this formula).
    """
    p = cfg.privacy
    eps = math.sqrt(2 * math.log(1.25 / p.delta)) / p.noise_multiplier
    return LocalDpMod(
        clipping_norm=p.clip_norm, sensitivity=2 * p.clip_norm, epsilon=eps, delta=p.delta
    )


def privacy_mods(cfg: RunConfig) -> list[Mod]:
    """Flower's site-side DP mod for ``privacy.client`` (none for server-side clipping)."""
    mode = cfg.privacy.client
    if mode == "client-fixed":
        return [fixedclipping_mod]
    if mode == "client-adaptive":
        return [adaptiveclipping_mod]
    if mode == "local":
        return [local_dp_mod(cfg)]
    return []


def legacy_fit_layout(cfg: RunConfig, site: SiteContext) -> Mod:
    """SecAgg+ speaks Flower's legacy layout (``fitins.*`` in, ``fitres.*`` out): convert it to
    and from the Message layout the rest of the chain uses. Tensors travel in sorted-name order
    (legacy ``Parameters`` are unnamed; the server uses the same order)."""
    names = sorted(setup.communicated_shapes(setup.build_model(cfg).ft))

    def mod(msg: Message, context: Context, call_next: Handler) -> Message:
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        arrays = parameters_to_ndarrays(fitins.parameters)
        if len(arrays) != len(names):
            raise ValueError(f"fitins holds {len(arrays)} tensors, the model {len(names)}")
        msg.content = RecordDict(
            {
                "arrays": wire.to_record(dict(zip(names, arrays, strict=True))),
                "config": ConfigRecord(dict(fitins.config)),
            }
        )
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        tensors = wire.from_record(next(iter(reply.content.array_records.values())))
        metrics = dict(next(iter(reply.content.metric_records.values())))
        res = FitRes(
            Status(Code.OK, ""),
            ndarrays_to_parameters([tensors[k] for k in names]),
            int(metrics["num-examples"]),
            {**metrics, "site": site.name},
        )
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    return mod


def train_chain(cfg: RunConfig, site: SiteContext) -> list[Mod]:
    """The mods around the training handler, outermost first (the module docstring)."""
    mods: list[Mod] = []
    if cfg.fl.secure_aggregation:
        mods += [secaggplus_mod, legacy_fit_layout(cfg, site)]
    return [*mods, codec_mod(cfg, site), *privacy_mods(cfg)]


def train_message(msg: Message, context: Context, overrides: dict | None = None) -> Message:
    """A training message through the whole chain and ``train_round``: the reply that leaves the
    site (run in the ClientApp process, or in the site's warm process: ``fl/warm.py``)."""
    cfg = config_from_context(context.run_config, overrides, context.node_config)
    site = site_context(cfg, context.node_config, cfg.out)

    def handler(inner: Message, ctx: Context) -> Message:
        config = inner.content["config"]
        out, metrics = client.train_round(  # through the module: tests spy on it
            cfg,
            site,
            int(config["server-round"]),
            wire.from_record(inner.content["arrays"]),
            str(config.get("foundation-sha256", "")),
        )
        content = RecordDict({"arrays": wire.to_record(out), "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=inner)

    return run_chain(train_chain(cfg, site), handler, msg, context)
