"""`csatdist settings`: every setting with its environment variable, default and help."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from csatdist.cli.options import JsonOpt
from csatdist.cli.output import print_json, print_rows
from csatdist.settings import Settings

app = typer.Typer()


@app.command("settings")
def settings_command(
    markdown: Annotated[bool, typer.Option("--markdown", help="As a Markdown table.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """List every setting with its environment variable, default and help."""
    rows = [
        {
            "name": name,
            "env": f"CSATDIST_{name.upper()}",
            "default": field.default,
            "help": field.description or "",
        }
        for name, field in Settings.model_fields.items()
    ]
    if json_output:
        print_json(rows)
    elif markdown:
        sys.stdout.write("| variable | default | meaning |\n|---|---|---|\n")
        for row in rows:
            default = f"`{row['default']}`" if row["default"] != "" else "(empty)"
            sys.stdout.write(f"| `{row['env']}` | {default} | {row['help']} |\n")
    else:
        print_rows(
            ("environment variable", "default", "meaning"),
            [(str(row["env"]), str(row["default"]), str(row["help"])) for row in rows],
            whole=("environment variable",),
        )
