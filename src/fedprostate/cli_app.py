"""The Typer application objects and the conventions every command shares.

Command modules register on these apps; ``cli.py`` imports them all. The conventions:

* inputs: ``--data`` (raw studies or a crop cache), ``--model`` (an exported bundle), a run or
  study folder as the argument; outputs: ``--out``. Older names stay as aliases.
* a user error (bad value, missing file, unreadable data) is one line on stderr and exit code 2;
  ``fedprostate --debug COMMAND`` shows the traceback instead.
* output is plain (no colour, no wrapping at 80 columns) when stdout is not a terminal;
  ``--json`` prints the command's summary as JSON on stdout.
"""

import functools
import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

from fedprostate._version import __version__

app = typer.Typer(
    help="fedprostate: federated fine-tuning of foundation models for csPCa detection from bpMRI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Synthesize, prepare and summarize MRI data.", no_args_is_help=True)
site_app = typer.Typer(help="Commands a hospital runs on its own machine.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(site_app, name="site")

# Errors a user causes (a value, a path, a file's content): one line, exit 2. Every project error
# class (ConfigError, DataFormatError, StudyError, BundleError, ExportError, ...) is a ValueError.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError)
_state = {"debug": False}

JSON_OPT = typer.Option(False, "--json", help="Print the summary as JSON on stdout.")


def console(stderr: bool = False) -> Console:
    """A rich console: colour and wrapping on a terminal; plain, unwrapped text otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=10_000, no_color=True, highlight=False, soft_wrap=True)


def fail(message: object, code: int = 2) -> NoReturn:
    """One line on stderr (no markup, never wrapped), then exit with ``code`` (2 = user error)."""
    text = " ".join(str(message).split())
    console(stderr=True).print(f"error: {text}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (numpy scalars and paths as plain values)."""
    sys.stdout.write(json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"fedprostate {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    """fedprostate: federated fine-tuning of foundation models for csPCa detection from bpMRI."""
    _state["debug"] = debug


def _guard(callback):
    """Run a command; a user error becomes one line on stderr and exit 2 (unless --debug)."""

    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except USER_ERRORS as exc:
            if _state["debug"]:
                raise
            fail(_message(exc))

    return wrapper


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"{exc.args[0] if exc.args else exc}"
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__


def guard_commands(*apps: typer.Typer) -> None:
    """Wrap every registered command of ``apps`` (and their sub-apps) in the user-error guard."""
    for sub in apps:
        for info in sub.registered_commands:
            if info.callback is not None and not getattr(info.callback, "_guarded", False):
                info.callback = _guard(info.callback)
                info.callback._guarded = True
        guard_commands(*(group.typer_instance for group in sub.registered_groups))
