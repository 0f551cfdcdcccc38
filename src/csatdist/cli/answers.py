"""`csatdist answers`: list, export and erase answer records (EXTENSIONS.md section 6)."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, BinaryIO

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from csatdist.answers import MAX_ID_LENGTH
from csatdist.cli.common import check_account, opened_store, read_settings
from csatdist.cli.options import AccountOpt, AgentsOpt, DatabaseOpt, JsonOpt, SkillsOpt
from csatdist.cli.output import console, errors, fail, notice, print_json, print_rows, when
from csatdist.clock import system_clock_ms
from csatdist.errors import CsatError
from csatdist.listing import Listing, csv_header, csv_lines, ndjson_lines, page_json, parse_listing
from csatdist.settings import Settings
from csatdist.store import AnswerRecord, Store

app = typer.Typer(
    help="List, export and erase answer records (every accepted answer is kept as one).",
    no_args_is_help=True,
)

TimeframeOpt = Annotated[
    str | None,
    typer.Option(
        "--timeframe",
        metavar="MINUTES",
        help="The distribution's window for this many minutes (1..1440); or --from and --to.",
        show_default=False,
    ),
]
FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from", metavar="TIME", help="Start (RFC 3339 or epoch ms), within the retention."
    ),
]
ToOpt = Annotated[
    str | None, typer.Option("--to", metavar="TIME", help="End, exclusive (RFC 3339 or epoch ms).")
]
ScoresOpt = Annotated[str | None, typer.Option(help="Only these scores, e.g. 1,2.")]

#: Records read per store round trip while an export is written: its memory is one page.
EXPORT_PAGE = 1000
#: Ids erased per store transaction (the HTTP erasure's limit per request).
ERASE_BATCH = 10_000
LISTING_HEADERS = ("id", "time", "conversation", "skill", "agent", "score", "comment")


def _listing(
    settings: Settings,
    *,
    timeframe: str | None,
    start: str | None,
    end: str | None,
    skills: str | None,
    agents: str | None,
    scores: str | None,
    limit: str | None = None,
    cursor: str | None = None,
) -> Listing:
    """The listing's parameters checked by the HTTP API's own rules: the same errors, exit 2."""
    try:
        return parse_listing(
            {
                "timeframe": timeframe,
                "from": start,
                "to": end,
                "skillIds": skills,
                "agentIds": agents,
                "scores": scores,
                "limit": limit,
                "cursor": cursor,
            },
            now_ms=system_clock_ms(),
            retention_minutes=settings.retention_minutes,
            max_ids=settings.max_ids_per_list,
        )
    except CsatError as exc:
        raise fail(exc.detail, 2) from None


def _entity(entity_id: int | None, name: str | None) -> str:
    shown = str(entity_id)
    return f"{shown} ({name})" if name else shown


def _record_cells(record: AnswerRecord) -> tuple[str, ...]:
    return (
        record.answer_id,
        when(record.time_ms),
        record.conversation_id or "",
        _entity(record.skill_id, record.skill_name),
        _entity(record.agent_id, record.agent_name),
        str(record.score),
        record.comment or "",
    )


@app.command("list")
def answers_list(
    account: AccountOpt,
    timeframe: TimeframeOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    skills: SkillsOpt = None,
    agents: AgentsOpt = None,
    scores: ScoresOpt = None,
    limit: Annotated[
        str | None, typer.Option(metavar="N", help="Records per page, 1..1000 (default 100).")
    ] = None,
    cursor: Annotated[
        str | None, typer.Option(help="The next page: the cursor the previous one printed.")
    ] = None,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List one page of answer records, newest first, with the HTTP listing's rules.

    A table on a terminal (time, conversation, skill, agent, score, comment); in a pipe,
    tab-separated rows that start with the answer id. When there may be more, the next page's
    cursor goes to stderr. --json prints the HTTP reply's body."""
    check_account(account)
    settings = read_settings(database_url=database)
    listing = _listing(
        settings,
        timeframe=timeframe,
        start=start,
        end=end,
        skills=skills,
        agents=agents,
        scores=scores,
        limit=limit,
        cursor=cursor,
    )
    with opened_store(settings) as store:
        page = store.list_answers(listing.page(account))
    body = page_json(page, listing.limit)
    if json_output:
        print_json(body)
        return
    covered = (
        f"account {account}, answers from {when(listing.start_ms)} to "
        f"{when(listing.end_ms)} (end exclusive)"
    )
    rows = [_record_cells(r) for r in page]
    if console.is_terminal:
        # For reading: the comment gets the room an answer id (seldom short) would take.
        console.print(covered, highlight=False)
        print_rows(
            LISTING_HEADERS[1:],
            [row[1:] for row in rows],
            whole=("conversation",),
            numeric=("score",),
            prose=("comment",),
        )
    else:
        # For scripts: each row starts with the id, what `answers erase` takes.
        notice(covered)  # a sentence beside the rows, not among them
        print_rows(LISTING_HEADERS, rows)
    if body["next"] is not None:
        notice(f"next page: --cursor {body['next']}")


def _export_format(chosen: str | None, output: str) -> str:
    if chosen is None:
        return "ndjson" if Path(output).suffix.lower() in (".ndjson", ".jsonl") else "csv"
    if chosen not in ("csv", "ndjson"):
        raise fail(f"--format must be csv or ndjson, not {chosen!r}", 2)
    return chosen


def _export_pages(store: Store, account: str, listing: Listing) -> Iterator[list[AnswerRecord]]:
    """Every record of the listing, a page at a time, each read after the previous was used."""
    bounded = replace(listing, limit=EXPORT_PAGE)
    after = listing.after
    while True:
        page = store.list_answers(bounded.page(account, after))
        if page:
            yield page
        if len(page) < EXPORT_PAGE:
            return
        after = (page[-1].time_ms, page[-1].answer_id)


@contextmanager
def _export_target(output: str) -> Iterator[BinaryIO]:
    """Standard output, or a file that appears complete or not at all: it is written under a
    temporary name beside it (readable by its owner only), renamed once the export ends."""
    if output == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    path = Path(output)
    try:
        descriptor, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".partial"
        )
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror}", 2) from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@app.command("export")
def answers_export(
    account: AccountOpt,
    timeframe: TimeframeOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    skills: SkillsOpt = None,
    agents: AgentsOpt = None,
    scores: ScoresOpt = None,
    export_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv or ndjson. Default: ndjson for an --output ending .ndjson or .jsonl, "
            "else csv.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="The file to write; - for standard output.")
    ] = "-",
    database: DatabaseOpt = None,
) -> None:
    """Write every matching answer record, newest first, as CSV or NDJSON: the HTTP export's
    rows, read from the store a page at a time (memory stays small however many there are).

    CSV times are RFC 3339 (UTC), NDJSON's epoch ms; a CSV text cell starting with = + - @ or
    a tab gets a leading apostrophe (spreadsheets would run it as a formula). A file is written
    whole or not at all; a count of the records written shows on stderr when it is a
    terminal."""
    check_account(account)
    kind = _export_format(export_format, output)
    settings = read_settings(database_url=database)
    listing = _listing(
        settings,
        timeframe=timeframe,
        start=start,
        end=end,
        skills=skills,
        agents=agents,
        scores=scores,
    )
    render = csv_lines if kind == "csv" else ndjson_lines
    # Records on the terminal are their own progress.
    counting = errors.is_terminal and not (output == "-" and console.is_terminal)
    written = 0
    with (
        opened_store(settings) as store,
        Progress(
            TextColumn("{task.description}"),
            TextColumn("{task.completed:,.0f} answers"),
            console=errors,
            disable=not counting,
        ) as progress,
    ):
        task = progress.add_task("exporting", total=None)
        try:
            with _export_target(output) as sink:
                if kind == "csv":
                    sink.write(csv_header())
                for page in _export_pages(store, account, listing):
                    sink.write(render(page))
                    written += len(page)
                    progress.advance(task, len(page))
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as other tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except CsatError as exc:
            where = "" if output == "-" else f"; {output} was not written"
            raise fail(f"{exc.detail} (after {written} answers){where}") from None
        progress.update(task, description="exported")


class _BadIds(ValueError):
    """Ids that cannot be answer ids; nothing is erased."""


def _check_ids(ids: Sequence[tuple[str, str]]) -> list[str]:
    """The ids (each with where it came from) once each, in order; every one must be an answer
    id, as for the HTTP erasure."""
    problems = [
        f"{where}: must be an answer id: a string of 1 to {MAX_ID_LENGTH} characters"
        for where, answer_id in ids
        if not 1 <= len(answer_id) <= MAX_ID_LENGTH or "\x00" in answer_id
    ]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise _BadIds("; ".join(problems[:5]) + more)
    return list(dict.fromkeys(answer_id for _, answer_id in ids))


def _read_ids(file: Path) -> list[tuple[str, str]]:
    """One id per line, exactly as written (only the line break is removed); blank lines are
    skipped."""
    name = "stdin" if str(file) == "-" else str(file)
    try:
        handle = sys.stdin.buffer if str(file) == "-" else file.open("rb")
        with handle:
            data = handle.read()
        text = data.decode("utf-8-sig")
    except OSError as exc:
        raise _BadIds(f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise _BadIds(f"{file} is not UTF-8 text ({exc})") from None
    found = []
    for number, line in enumerate(text.split("\n"), start=1):
        answer_id = line.removesuffix("\r")
        if answer_id:
            found.append((f"{name} line {number}", answer_id))
    return found


@app.command("erase")
def answers_erase(
    account: AccountOpt,
    file: Annotated[
        Path | None,
        typer.Argument(
            metavar="FILE",
            help="A file of answer ids, one per line; - for stdin.",
            show_default=False,
        ),
    ] = None,
    ids: Annotated[
        list[str] | None,
        typer.Option(
            "--id", metavar="ID", help="An answer id to erase; repeat for more.", show_default=False
        ),
    ] = None,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Erase answer records and their counts, durably, at once (10,000 ids per transaction).

    Prints how many were erased and the ids never recorded ("unknown"); exits 0 either way.
    Every id given, known or not, is remembered without any content until the retention ends,
    so a replayed or late copy of it is refused rather than counted. --json prints the HTTP
    reply's body."""
    check_account(account)
    if (file is None) == (not ids):
        raise fail("give the ids to erase with --id (repeatable) or in a FILE, one of the two", 2)
    try:
        given = (
            _read_ids(file)
            if file is not None
            else [(f"--id {n}", i) for n, i in enumerate(ids or [], 1)]
        )
        wanted = _check_ids(given)
    except _BadIds as exc:
        raise fail(str(exc), 2) from None
    settings = read_settings(database_url=database)
    erased, unknown = 0, []
    with (
        opened_store(settings) as store,
        Progress(
            TextColumn("erasing"),
            BarColumn(),
            TaskProgressColumn(),
            console=errors,
            disable=json_output or not errors.is_terminal or len(wanted) <= ERASE_BATCH,
        ) as progress,
    ):
        task = progress.add_task("erase", total=len(wanted))
        for first in range(0, len(wanted), ERASE_BATCH):
            try:
                outcome = store.erase_answers(
                    account, wanted[first : first + ERASE_BATCH], system_clock_ms()
                )
            except CsatError as exc:
                raise fail(
                    f"{exc.detail}; the first {first} of {len(wanted)} ids were handled "
                    f"({erased} erased) — erasing them again is safe"
                ) from None
            erased += len(outcome.erased)
            unknown.extend(outcome.unknown)
            progress.advance(task, len(outcome.erased) + len(outcome.unknown))
    if json_output:
        print_json({"erased": erased, "unknown": unknown})
        return
    console.print(f"erased {erased}, unknown {len(unknown)}", highlight=False)
    for answer_id in unknown:
        console.print(f"  {escape(answer_id)}", highlight=False)
