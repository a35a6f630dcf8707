"""`qwenedit` command line: each subcommand lives in its own module and registers on ``app``."""

from qwenedit.cli import emulator, run, spend, validate  # noqa: F401  (registers the commands)
from qwenedit.cli._app import app

__all__ = ["app"]
