"""`csatdist ingest`: a file's answers straight into the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from csatdist.cli.answer_files import FILE_HELP, Unreadable, load_answers
from csatdist.cli.common import check_account, opened_store, read_settings
from csatdist.cli.options import AccountOpt, DatabaseOpt, JsonOpt
from csatdist.cli.output import console, errors, print_json
from csatdist.clock import system_clock_ms
from csatdist.service import IngestReport, ingest_answers

app = typer.Typer()

INGEST_BATCH = 5000


@app.command(
    help="Load answers from a file straight into the store, in batches of 5,000.\n\n"
    + FILE_HELP
    + "\n\nExits 1 when any answer was rejected (after loading the valid ones "
    "and printing the summary), unless --allow-partial; 2 when the file or options "
    "are unusable."
)
def ingest(
    file: Annotated[Path, typer.Argument(help="The answers file (see above); - for stdin.")],
    account: AccountOpt,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
    show_rejected: Annotated[int, typer.Option(help="How many rejections to list.")] = 10,
    allow_partial: Annotated[
        bool,
        typer.Option("--allow-partial", help="Exit 0 even when some answers were rejected."),
    ] = False,
) -> None:
    from csatdist.answers import Rejection

    check_account(account)
    settings = read_settings(database_url=database)
    items = load_answers(file)
    total = IngestReport()
    with (
        opened_store(settings) as store,
        Progress(
            TextColumn("ingesting"),
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            console=errors,
            disable=json_output or not errors.is_terminal,
        ) as progress,
    ):
        task = progress.add_task("ingest", total=len(items))
        for start in range(0, len(items), INGEST_BATCH):
            batch = items[start : start + INGEST_BATCH]
            readable = [(i, a) for i, a in batch if not isinstance(a, Unreadable)]
            report = ingest_answers(
                store, account, readable, system_clock_ms(), settings.retention_minutes
            )
            report.rejected.extend(
                Rejection(i, None, a.reason) for i, a in batch if isinstance(a, Unreadable)
            )
            total.merge(report)
            progress.advance(task, len(batch))
    total.rejected.sort(key=lambda r: r.index)
    if json_output:
        print_json(total.as_json())
    else:
        console.print(
            f"accepted [green]{total.accepted}[/], updated {total.updated}, "
            f"duplicates {total.duplicates}, rejected [red]{len(total.rejected)}[/]"
        )
        for rejection in total.rejected[:show_rejected]:
            console.print(
                f"  #{rejection.index} {escape(rejection.id or '')}: {escape(rejection.reason)}"
            )
        if len(total.rejected) > show_rejected:
            console.print(f"  … and {len(total.rejected) - show_rejected} more (--show-rejected N)")
    if total.rejected and not allow_partial:
        raise typer.Exit(1)
