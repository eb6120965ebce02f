"""Flower ClientApp: one per hospital. Thin glue: records in, plain functions, records out.

Training runs through a chain of Flower mods (``site_mods``: SecAgg+, codecs, DP clipping and
noise, in that documented order). Evaluation obeys the site's own limits from its node config
(``eval-splits``: the splits it scores, default ``val``; ``max-evals``: queries answered per run;
counted in the node's context state, which a SuperNode restart resets).

The work itself runs here, or, when the node config asks for it (``warm-seconds`` > 0, deployment
only), in the site's warm process (``fl/warm.py``) that keeps torch, the model and the crops
loaded between messages: a training message goes there whole and its mod chain runs there
(masking and noise still happen at the site, before the reply comes back here to be audited and
sent); an evaluation message hands over its tensors.

Errors sent to the server carry no patient/study identifiers or file paths: the full error stays
in the site's local log, the server gets the exception type and the site name only — unless the
error is a ``PublicError`` written to be shared (e.g. a foundation hash mismatch). Everything that
leaves (tensor names and bytes, metrics, error text) is first appended to the site's own audit
log (``<state-dir>/<site>/audit.jsonl``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedprostate.fl import warm, wire
from fedprostate.fl.config_io import config_from_context
from fedprostate.fl.site import (
    PublicError,
    SiteContext,
    audit_sent,
    check_eval_allowed,
    site_context,
)

REPORT_KEY = wire.REPORT_KEY
LIMITS_KEY = "site-limits"  # this run's evaluation queries answered (the node's context state)

log = logging.getLogger("fedprostate.site")


@contextmanager
def errors_stay_local(site: SiteContext, phase: str, msg: Message):
    try:
        yield
    except PublicError as exc:
        audit_sent(site, msg, phase, error=str(exc))
        raise
    except Exception as exc:
        log.exception("site %s: %s failed", site.name, phase)
        kind = exc.type_name if isinstance(exc, warm.RemoteError) else type(exc).__name__
        public = f"site {site.name}: {kind} during {phase} (details in the site's local log)"
        audit_sent(site, msg, phase, error=public)
        raise RuntimeError(public) from None


def _warm_seconds(context: Context, site: SiteContext) -> float:
    """Idle seconds of the site's warm process, or 0 to work here (deployment only: the warm
    process needs a ``state-dir``)."""
    idle_s = float(context.node_config.get("warm-seconds", 0) or 0)
    return idle_s if site.state_dir is not None else 0.0


def _run(op: str, overrides, context: Context, site: SiteContext, **call):
    """``train_round``/``evaluate_received`` here, or in the site's warm process when the node
    config asks for one (``warm-seconds`` > 0)."""
    if idle_s := _warm_seconds(context, site):
        request = {
            "op": op,
            "run_config": dict(context.run_config),
            "overrides": overrides,
            "node_config": dict(context.node_config),
            **call,
        }
        return warm.call(site.state_dir, request, idle_s)
    from fedprostate.fl import client  # torch, timm, peft: only where the work is done here

    cfg = config_from_context(context.run_config, overrides, context.node_config)
    return client.run_step(op, cfg, site, call["server_round"], call["received"], call["kwargs"])


def _train(msg: Message, context: Context, overrides, site: SiteContext) -> Message:
    """The training message through the site's mod chain (``site_mods.train_message``: decode,
    train, clip/noise, encode, SecAgg+ masking) here, or all of it in the site's warm process, so
    that this one-message process never imports torch (``fl/warm.py``)."""
    if idle_s := _warm_seconds(context, site):
        return warm.call_message(site.state_dir, msg, context, overrides, idle_s)
    from fedprostate.fl.site_mods import train_message  # torch: only where the work is done

    return train_message(msg, context, overrides)


def make_client_app(overrides: dict | None = None) -> ClientApp:
    app = ClientApp()

    @app.train()
    def handle_train(msg: Message, context: Context) -> Message:
        cfg = config_from_context(context.run_config, overrides, context.node_config)
        site = site_context(cfg, context.node_config, cfg.out)
        with errors_stay_local(site, "training", msg):
            reply = _train(msg, context, overrides, site)
        if reply.has_error():
            audit_sent(site, msg, "training", error=reply.error.reason)
        else:
            audit_sent(site, msg, "training", content=reply.content)
        return reply

    @app.evaluate()
    def handle_evaluate(msg: Message, context: Context) -> Message:
        cfg = config_from_context(context.run_config, overrides, context.node_config)
        site = site_context(cfg, context.node_config, cfg.out)
        config = msg.content["config"]
        split = str(config.get("split", "val"))
        limits = context.state.config_records.get(LIMITS_KEY) or ConfigRecord({"evals": 0})
        with errors_stay_local(site, "evaluation", msg):
            check_eval_allowed(site, split, int(limits["evals"]))
            metrics = _run(
                "evaluate",
                overrides,
                context,
                site,
                server_round=int(config["server-round"]),
                received=wire.from_record(msg.content["arrays"]),
                kwargs={
                    "split": split,
                    "downlink": str(config.get("downlink", "fp32")),
                    "expected_sha": str(config.get("foundation-sha256", "")),
                },
            )
        context.state.config_records[LIMITS_KEY] = ConfigRecord({"evals": int(limits["evals"]) + 1})
        content = RecordDict(
            {"metrics": MetricRecord(metrics), REPORT_KEY: ConfigRecord({"site": site.name})}
        )
        audit_sent(site, msg, "evaluation", content=content)
        return Message(content=content, reply_to=msg)

    @app.query()
    def handle_query(msg: Message, context: Context) -> Message:
        """The site's name, nothing else: the server orders the nodes it samples by it."""
        cfg = config_from_context(context.run_config, overrides, context.node_config)
        site = site_context(cfg, context.node_config, cfg.out)
        content = RecordDict({REPORT_KEY: ConfigRecord({"site": site.name})})
        audit_sent(site, msg, "query", content=content)
        return Message(content=content, reply_to=msg)

    return app


app = make_client_app()
