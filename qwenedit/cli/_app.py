"""The one Typer application every `qwenedit` subcommand registers on."""

import typer

app = typer.Typer(
    name="qwenedit",
    help="Bulk image editing with the Qwen image-edit API into S3-compatible storage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
