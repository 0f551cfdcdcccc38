"""The options several commands take."""

from __future__ import annotations

from typing import Annotated

import typer

DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="SQLite path, sqlite:///path or postgresql://… Env CSATDIST_DATABASE_URL.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AccountOpt = Annotated[str, typer.Option("--account", help="Account id.")]
SkillsOpt = Annotated[
    str | None, typer.Option(help="'all' or comma-separated ids (-1: unassigned).")
]
AgentsOpt = Annotated[
    str | None, typer.Option(help="'all' or comma-separated ids (-1: unassigned).")
]
