"""Flower ServerApp: parses the run config once and hands the Grid to ``run_server``."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedprostate.fl.config_io import config_from_context
from fedprostate.fl.server import run_server


def make_server_app(overrides: dict | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def handle_main(grid: Grid, context: Context) -> None:
        run_server(grid, config_from_context(context.run_config, overrides))

    return app


app = make_server_app()
