"""The Typer application objects. Command modules register on these; ``cli.py`` imports them all."""

from typing import NoReturn

import typer
from rich.console import Console

app = typer.Typer(
    help="fedprostate: federated fine-tuning of foundation models for csPCa detection from bpMRI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Synthesize, prepare and summarize MRI data.", no_args_is_help=True)
site_app = typer.Typer(help="Commands a hospital runs on its own machine.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(site_app, name="site")

err_console = Console(stderr=True, soft_wrap=True)


def fail(message: object, code: int = 2) -> NoReturn:
    """One line on stderr (no markup, never wrapped), then exit with ``code`` (2 = user error)."""
    text = " ".join(str(message).split())
    err_console.print(f"error: {text}", markup=False, highlight=False)
    raise typer.Exit(code)
