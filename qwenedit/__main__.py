"""`python -m qwenedit` is the `qwenedit` command."""

from qwenedit.cli import app

app()
