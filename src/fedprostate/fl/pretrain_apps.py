"""Flower apps of federated self-supervised pre-training: thin glue over ``pretrain_site`` and
``pretrain_server`` (records in, plain functions, records out). ``flwr run`` finds them as
``fedprostate.fl.pretrain_apps:clientapp`` / ``:serverapp``; errors stay local as in fine-tuning.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedprostate.config import parse_codec
from fedprostate.fl import wire
from fedprostate.fl.client import SiteContext
from fedprostate.fl.client_app import errors_stay_local
from fedprostate.fl.config_io import config_from_context
from fedprostate.fl.pretrain_server import run_pretrain_server
from fedprostate.fl.pretrain_site import pretrain_round, site_of_node
from fedprostate.fl.strategies import REPORT_KEY


def make_pretrain_client_app(overrides: dict | None = None) -> ClientApp:
    app = ClientApp()

    @app.train()
    def handle_train(msg: Message, context: Context) -> Message:
        cfg = config_from_context(context.run_config, overrides, context.node_config)
        site = site_of_node(cfg, context.node_config)
        node_codec = context.node_config.get("codec")
        uplink = str(parse_codec("node config codec", str(node_codec)) if node_codec
                     else cfg.compress.uplink_of(site))  # fmt: skip
        config = msg.content["config"]
        # no audit log for pre-training yet (state_dir None): errors still stay local
        with errors_stay_local(SiteContext(site, None, uplink), "pre-training", msg):
            out, metrics = pretrain_round(
                cfg,
                site,
                uplink,
                int(config["server-round"]),
                wire.from_record(msg.content["arrays"]),
                downlink=str(config.get("downlink", "fp32")),
            )
        content = RecordDict(
            {
                "arrays": wire.to_record(out),
                "metrics": MetricRecord(metrics),
                REPORT_KEY: ConfigRecord({"site": site, "codec": uplink}),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.query()
    def handle_query(msg: Message, context: Context) -> Message:
        """The site's name only: the server orders the nodes it samples by it (fl.sampling)."""
        cfg = config_from_context(context.run_config, overrides, context.node_config)
        content = RecordDict(
            {REPORT_KEY: ConfigRecord({"site": site_of_node(cfg, context.node_config)})}
        )
        return Message(content=content, reply_to=msg)

    return app


def make_pretrain_server_app(overrides: dict | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def handle_main(grid: Grid, context: Context) -> None:
        run_pretrain_server(grid, config_from_context(context.run_config, overrides))

    return app


clientapp = make_pretrain_client_app()
serverapp = make_pretrain_server_app()
