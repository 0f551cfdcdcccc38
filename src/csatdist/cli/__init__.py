"""The command line: thin commands over the same service functions as the HTTP API."""

from __future__ import annotations

import typer

from csatdist import __version__
from csatdist.cli import (
    alerts,
    answers,
    directory,
    ingest,
    keys,
    migrate,
    query,
    report,
    serve,
    settings,
    stream,
    users,
)
from csatdist.cli.common import JsonOpt
from csatdist.cli.output import column_widths, console, print_json, prose_widths

__all__ = ["app", "column_widths", "main", "prose_widths"]

app = typer.Typer(
    help="csatdist: a Messaging CSAT Distribution service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def version(json_output: JsonOpt = False) -> None:
    """Print the version."""
    if json_output:
        print_json({"version": __version__})
    else:
        console.print(__version__)


for commands in (
    serve.app,
    settings.app,
    migrate.app,
    ingest.app,
    stream.app,
    query.app,
    report.app,
):
    app.add_typer(commands)
app.add_typer(keys.app, name="keys")
app.add_typer(users.app, name="users")
app.add_typer(stream.streams_app, name="streams")
app.add_typer(answers.app, name="answers")
app.add_typer(alerts.app, name="alerts")
app.add_typer(directory.app, name="directory")


def main() -> None:
    app()
