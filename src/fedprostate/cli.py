"""Entry point of the ``fedprostate`` command. Each area registers its commands in its own module."""

import importlib

from fedprostate.cli_app import app, guard_commands

# Command modules, imported for their side effect of registering commands on the Typer apps.
_COMMAND_MODULES = (
    "fedprostate.commands.data_synth",
    "fedprostate.commands.data_prepare",
    "fedprostate.commands.pretrain",
    "fedprostate.commands.foundation",
    "fedprostate.commands.runs",
    "fedprostate.commands.study",
    "fedprostate.commands.bundle",
    "fedprostate.commands.deploy",
    "fedprostate.commands.privacy",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(_name)

# A user error in any command: one line on stderr, exit 2 (`fedprostate --debug` shows it all).
guard_commands(app)

__all__ = ["app"]
