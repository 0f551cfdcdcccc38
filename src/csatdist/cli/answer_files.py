"""Files of answers, NDJSON or CSV, as `csatdist ingest` and `csatdist publish` read them."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import orjson

from csatdist.cli.output import fail, notice
from csatdist.listing import CSV_COLUMNS

#: The columns of a CSV file of answers are those `answers export` writes
#: (:data:`csatdist.listing.CSV_COLUMNS`), so an export loads back as it is.
CSV_REQUIRED = ("id", "time", "score")
#: What an error names as the header row to write: the columns every answer has.
_CSV_BASIC = CSV_COLUMNS[:5]
_CSV_INTEGERS = ("skillId", "agentId", "score")
#: Kept verbatim (not trimmed) when the cell is not blank.
_CSV_TEXTS = ("conversationId", "comment", "channel", "skillName", "agentName")
FILE_HELP = (
    "NDJSON (.ndjson/.jsonl: one answer object per line) or CSV (.csv), by extension, else by "
    "content; - for stdin. A CSV file starts with a header row naming its columns: "
    "id,time,skillId,agentId,score, then optionally "
    "conversationId,comment,channel,updatedAt,skillName,agentName, in any order. id, time "
    "(epoch ms or RFC 3339) and score (1-5) are required; skillId and agentId are optional, and "
    "an empty cell (or no such column) means unassigned (-1). The other columns are the "
    "answer's optional fields (updatedAt like time; the texts as written); an empty cell (or no "
    "such column) leaves the field absent. Other columns are ignored."
)


class _BadFile(ValueError):
    """The file as a whole cannot be read as answers (no row is tried)."""


class Unreadable:
    """A line that could not be read as JSON, and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _read_answers(path: Path) -> list[tuple[int, object]]:
    """Answers of an NDJSON or CSV file (by extension, else by content), with 0-based indexes."""
    handle = sys.stdin.buffer if str(path) == "-" else path.open("rb")
    with handle:
        data = handle.read()
    is_csv = path.suffix.lower() == ".csv" or (
        path.suffix.lower() not in {".ndjson", ".jsonl", ".json"} and data.lstrip()[:1] != b"{"
    )
    if is_csv:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _BadFile(f"{path} is not UTF-8 text ({exc}); save the CSV as UTF-8") from None
        return _csv_answers(text, str(path))
    items: list[tuple[int, object]] = []
    for index, line in enumerate(data.split(b"\n")):
        if line.strip():
            try:
                items.append((index, orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                items.append((index, Unreadable(f"line is not valid JSON: {exc}")))
    return items


def _csv_answers(text: str, name: str) -> list[tuple[int, object]]:
    """CSV under a header row (see FILE_HELP); a file without one, or without a required
    column, is refused as a whole rather than every row rejected."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise _BadFile(
            f"{name} is empty: a CSV file of answers starts with a header row such as "
            f"{','.join(_CSV_BASIC)}"
        )
    reader.fieldnames = [column.strip() for column in reader.fieldnames]
    missing = [column for column in CSV_REQUIRED if column not in reader.fieldnames]
    if missing:
        found = ",".join(reader.fieldnames)
        raise _BadFile(
            f"{name}: the CSV header row lacks the column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (the first line reads {found!r}); the first line must name "
            f"the columns, e.g. {','.join(_CSV_BASIC)} (skillId and agentId may be left out)"
        )
    unknown = [c for c in reader.fieldnames if c not in CSV_COLUMNS]
    if unknown:
        notice(f"{name}: ignoring the column{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    items: list[tuple[int, object]] = []
    for index, row in enumerate(reader):
        answer: dict[str, object] = {"id": row.get("id")}
        for field in CSV_COLUMNS[1:]:
            value = row.get(field)
            if value is None or value.strip() == "":
                if field in _CSV_INTEGERS:
                    answer[field] = None  # a null skillId or agentId: unassigned
            elif field in _CSV_TEXTS:
                answer[field] = value
            else:
                try:
                    answer[field] = int(value)
                except ValueError:
                    answer[field] = value.strip()
        # Without a time the answer is rejected as "time is required", like a JSON answer.
        items.append((index, answer))
    return items


def load_answers(file: Path) -> list[tuple[int, object]]:
    if str(file) != "-" and not file.exists():
        raise fail(f"{file} does not exist", 2)
    try:
        return _read_answers(file)
    except _BadFile as exc:
        raise fail(str(exc), 2) from None
