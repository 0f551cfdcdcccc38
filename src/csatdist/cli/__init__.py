"""The command line: thin commands over the same service functions as the HTTP API.

One module per command or group of commands, named after it (as http/routes/ has one router per
concern); output.py, options.py and common.py hold what they share. Here they are put together
into ``app``.
"""

from __future__ import annotations

import typer

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
    version,
)
from csatdist.cli.output import column_widths, prose_widths

__all__ = ["app", "column_widths", "main", "prose_widths"]

app = typer.Typer(
    help="csatdist: a Messaging CSAT Distribution service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# --help lists the commands in the order they are added here, then the groups. A module's app
# added without a name adds its commands to csatdist's own.
for commands in (
    version.app,
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
