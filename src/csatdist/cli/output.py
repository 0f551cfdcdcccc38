"""What commands print: JSON, tables (a terminal's, or tab-separated rows in a pipe), notices and
errors."""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Messages are never broken at 80 columns: a terminal wraps them itself, and a pipe or a log
# keeps each on one line for grep.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


#: A tab or line break inside a value would split its row or column.
_ONE_LINE = str.maketrans("\t\n\r", "   ")


def notice(message: str) -> None:
    """What a command did on the user's behalf beside its result (stderr: --json stays pure)."""
    errors.print(escape(message), highlight=False)


def print_rows(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    whole: Collection[str] = (),
    numeric: Collection[str] = (),
    prose: Collection[str] = (),
    title: str | None = None,
) -> None:
    """A table on a terminal, whose long cells fold onto more lines, never cut (the ``whole``
    columns, ids one copies, stay on one line while they fit; the ``prose`` columns, free text,
    get the room left); elsewhere tab-separated rows under a header line, every value complete,
    for grep, cut and awk."""
    if not console.is_terminal:
        for row in (headers, *rows):
            sys.stdout.write("\t".join(cell.translate(_ONE_LINE) for cell in row) + "\n")
        return
    columns = list(zip(headers, *rows, strict=True))
    natural = [max(len(cell) for cell in column) for column in columns]
    words = [
        max(len(word) for cell in column for word in [*cell.split(), ""]) for column in columns
    ]
    # Columns are three characters apart (a space, the rule, a space); the edges have none.
    room = console.width - 3 * (len(headers) - 1)
    widths = None
    if sum(natural) > room:
        widths = prose_widths(natural, words, [h in prose for h in headers], room)
    if widths is None:
        widths = column_widths(natural, words, [h in whole for h in headers], room)
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
    for header, width in zip(headers, widths, strict=True):
        table.add_column(
            header,
            overflow="fold",
            width=width,
            justify="right" if header in numeric else "left",
        )
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)


#: Below this, a folding column is not kept from splitting its words (a date, "read,write").
_WORD = 10
#: The narrowest other columns may get so that ids stay whole.
_FOLDED = 4


def column_widths(
    natural: Sequence[int], words: Sequence[int], whole: Sequence[bool], room: int
) -> list[int]:
    """Column widths within ``room``: every column its natural width when all fit. Otherwise
    the ``whole`` columns (ids) keep theirs if the others can have ``_FOLDED`` each; the others
    first get their longest word (up to ``_WORD``, less if the room is short), then an even
    share of what is left, never more than they need. Left to itself, Rich folds or cuts an id
    as early as prose, and crops the table's right edge when it cannot meet a minimum width."""
    count = len(natural)
    if sum(natural) <= room:
        return list(natural)
    fixed = {i for i in range(count) if whole[i]}
    if sum(natural[i] for i in fixed) + _FOLDED * (count - len(fixed)) > room:
        fixed = set()
    others = [i for i in range(count) if i not in fixed]
    widths = {i: natural[i] for i in fixed}
    left = room - sum(widths.values())
    for cap in range(_WORD, 0, -1):  # words as whole as the room allows
        floors = {i: max(min(words[i], cap, natural[i]), 1) for i in others}
        if sum(floors.values()) <= left:
            break
    widths.update(floors)
    left -= sum(floors.values())
    for position, index in enumerate(sorted(others, key=lambda i: natural[i] - floors[i])):
        grant = min(natural[index] - widths[index], max(left, 0) // (len(others) - position))
        widths[index] += grant
        left -= grant
    return [widths[i] for i in range(count)]


#: The narrowest a prose column is given before every column folds alike.
_PROSE = 12


def prose_widths(
    natural: Sequence[int], words: Sequence[int], prose: Sequence[bool], room: int
) -> list[int] | None:
    """Column widths within ``room`` that fold free text rather than values: every other
    column gets its longest word (a value of one word stays whole, a date and a time go on two
    lines), the ``prose`` columns what is left, up to what they need, and only then do the
    others widen. None when there is no prose column, or not ``_PROSE`` left for each."""
    count = len(natural)
    texts = [i for i in range(count) if prose[i]]
    others = [i for i in range(count) if not prose[i]]
    widths = [0 if prose[i] else max(min(natural[i], words[i]), 1) for i in range(count)]
    left = room - sum(widths)
    if not texts or left < _PROSE * len(texts):
        return None
    for position, index in enumerate(sorted(texts, key=lambda i: natural[i])):
        widths[index] = min(natural[index], left // (len(texts) - position))
        left -= widths[index]
    for position, index in enumerate(sorted(others, key=lambda i: natural[i] - widths[i])):
        grant = min(natural[index] - widths[index], left // (len(others) - position))
        widths[index] += grant
        left -= grant
    return widths


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def count_of(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


#: The columns of a metrics object in the tables of query and report: the answers of each score,
#: their total, the positive ones and the CSAT score.
METRIC_HEADERS = ("1", "2", "3", "4", "5", "total", "positive", "CSAT")
