"""`csatdist directory`: names for skill and agent ids (EXTENSIONS.md section 9)."""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from csatdist.cli.common import check_account, opened_store, read_settings
from csatdist.cli.options import AccountOpt, DatabaseOpt, JsonOpt
from csatdist.cli.output import console, count_of, errors, fail, print_json, print_rows
from csatdist.clock import system_clock_ms

app = typer.Typer(
    help="Names for skill and agent ids, shown by the dashboard, exports, reports and alerts.",
    no_args_is_help=True,
)

DIRECTORY_COLUMNS = ("kind", "id", "name")
#: Names written per transaction: the HTTP PUT's limit.
DIRECTORY_BATCH = 10_000
_DIRECTORY_KINDS = {"skill": "skills", "agent": "agents"}
#: Bad rows listed before "and N more".
_PROBLEMS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class _DirectoryRow:
    line: int
    kind: str  # "skills" or "agents", the PUT body's keys
    key: str  # the id, as the PUT body spells it
    name: str | None


def _directory_rows(text: str, source: str) -> tuple[list[_DirectoryRow], list[str]]:
    """The rows of a ``kind,id,name`` CSV file, and its problems (``line 3, column 2 (id):
    …``), each row checked by the PUT body's own parser."""
    from csatdist.directory import parse_directory_update
    from csatdist.errors import InvalidRequest

    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return [], [
            f"{source} is empty: the first line must be the header {','.join(DIRECTORY_COLUMNS)}"
        ]
    columns = [cell.strip() for cell in header]
    missing = [c for c in DIRECTORY_COLUMNS if c not in columns]
    if missing:
        return [], [
            f"{source} line 1: the header lacks {', '.join(missing)} (it reads "
            f"{','.join(columns)!r}); the first line must be {','.join(DIRECTORY_COLUMNS)}"
        ]
    at = {column: columns.index(column) for column in DIRECTORY_COLUMNS}

    def where(line: int, column: str) -> str:
        return f"{source} line {line}, column {at[column] + 1} ({column})"

    rows: list[_DirectoryRow] = []
    problems: list[str] = []
    end = reader.line_num
    for cells in reader:
        line, end = end + 1, reader.line_num
        if not cells:
            continue  # a blank line
        if len(cells) != len(columns):
            problems.append(
                f"{source} line {line}: {len(cells)} fields, the header has {len(columns)}"
                + (
                    " (a name with a comma goes in double quotes)"
                    if len(cells) > len(columns)
                    else ""
                )
            )
            continue
        kind_cell, key, name_cell = (cells[at[c]] for c in DIRECTORY_COLUMNS)
        kind = _DIRECTORY_KINDS.get(kind_cell.strip().lower())
        if kind is None:
            problems.append(
                f"{where(line, 'kind')}: must be skill or agent, got {kind_cell[:40]!r}"
            )
            continue
        key = key.strip()
        name: str | None = name_cell.strip()
        if name == "":
            if name_cell:
                problems.append(
                    f"{where(line, 'name')}: only spaces; leave the cell empty to remove the name"
                )
                continue
            name = None  # an empty name removes the id's name
        try:
            parse_directory_update({kind: {key: name}}, max_entries=1)
        except InvalidRequest as exc:
            problem = exc.invalid_params[0]
            if problem.name == kind:  # the id (the PUT body's key) is not an id
                problems.append(
                    f"{where(line, 'id')}: must be a whole number within int64 written plainly "
                    f"(12, -1; no leading zeros or '+'), got {key[:30]!r}"
                )
            else:
                problems.append(f"{where(line, 'name')}: {problem.reason}")
            continue
        rows.append(_DirectoryRow(line, kind, key, name))
    return rows, problems


@app.command("import")
def directory_import(
    file: Annotated[
        Path, typer.Argument(help="A CSV file under the header kind,id,name; - for stdin.")
    ],
    account: AccountOpt,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Set names from a CSV file: kind (skill or agent), id, name; an empty name removes the
    id's name. Every row is checked first, with the rules of PUT …/directory: any bad row and
    nothing is written (exit 2, naming its line and column). Then written in batches of 10,000;
    the last row of an id wins."""
    from csatdist.directory import parse_directory_update

    check_account(account)
    settings = read_settings(database_url=database)
    if str(file) != "-" and not file.is_file():
        raise fail(f"{file} does not exist", 2)
    data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(f"{file} is not UTF-8 text ({exc}); save the CSV as UTF-8", 2) from None
    rows, problems = _directory_rows(text, str(file))
    if problems:
        for problem in problems[:_PROBLEMS_SHOWN]:
            errors.print(f"[bold red]error:[/] {escape(problem)}", highlight=False)
        if len(problems) > _PROBLEMS_SHOWN:
            errors.print(f"… and {len(problems) - _PROBLEMS_SHOWN} more bad rows", highlight=False)
        errors.print("nothing was imported", highlight=False)
        raise typer.Exit(2)
    latest = {(row.kind, row.key): row.name for row in rows}  # the last row of an id wins
    counts = {"skills": 0, "agents": 0, "removed": 0}
    entries = list(latest.items())
    with opened_store(settings) as store:
        now = system_clock_ms()
        for start in range(0, len(entries), DIRECTORY_BATCH):
            document: dict[str, dict[str, str | None]] = {"skills": {}, "agents": {}}
            for (kind, key), name in entries[start : start + DIRECTORY_BATCH]:
                document[kind][key] = name
                counts["removed" if name is None else kind] += 1
            store.update_directory(account, parse_directory_update(document, DIRECTORY_BATCH), now)
    summary = {
        "account": account,
        "rows": len(rows),
        "named": {"skills": counts["skills"], "agents": counts["agents"]},
        "removed": counts["removed"],
    }
    if json_output:
        print_json(summary)
    else:
        console.print(
            f"account {account}: named {count_of(counts['skills'], 'skill')} and "
            f"{count_of(counts['agents'], 'agent')}, removed {count_of(counts['removed'], 'name')} "
            f"({count_of(len(rows), 'row')} of {escape(str(file))})",
            highlight=False,
        )


@app.command("show")
def directory_show(
    account: AccountOpt, database: DatabaseOpt = None, json_output: JsonOpt = False
) -> None:
    """Print the account's names (--json: the GET …/directory body)."""
    from csatdist.directory import directory_document

    check_account(account)
    with opened_store(read_settings(database_url=database)) as store:
        document = directory_document(store.directory(account))
    if json_output:
        print_json(document)
        return
    print_rows(
        DIRECTORY_COLUMNS,
        [
            (kind.removesuffix("s"), key, name)
            for kind in ("skills", "agents")
            for key, name in document[kind].items()
        ],
        whole=("id",),
        numeric=("id",),
    )
