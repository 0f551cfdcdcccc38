"""`csatdist migrate`: apply the pending schema migrations."""

from __future__ import annotations

import typer

from csatdist.cli.common import opened_store, read_settings
from csatdist.cli.options import DatabaseOpt, JsonOpt
from csatdist.cli.output import console, print_json

app = typer.Typer()


@app.command()
def migrate(database: DatabaseOpt = None, json_output: JsonOpt = False) -> None:
    """Apply pending schema migrations (serve does this on start too)."""
    settings = read_settings(database_url=database)
    with opened_store(settings) as store:
        version = store.schema_version()
    if json_output:
        print_json({"schema_version": version})
    else:
        console.print(f"schema is at version {version}")
