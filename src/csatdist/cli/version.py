"""`csatdist version`."""

from __future__ import annotations

import typer

from csatdist import __version__
from csatdist.cli.options import JsonOpt
from csatdist.cli.output import console, print_json

app = typer.Typer()


@app.command()
def version(json_output: JsonOpt = False) -> None:
    """Print the version."""
    if json_output:
        print_json({"version": __version__})
    else:
        console.print(__version__)
