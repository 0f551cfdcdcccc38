"""Listing and exporting answer records: parameters, cursors and the rendered rows (pure).

Rules are EXTENSIONS.md section 6. A listing covers either the distribution's window for a
``timeframe`` or a half-open ``[from, to)`` within retention, with the distribution's
``skillIds``/``agentIds`` and a ``scores`` filter, newest ``time`` first, then by id. A page ends
with a cursor naming its last record: the next page starts strictly after it, so a record that
stays on record is listed exactly once however many answers arrive meanwhile (a new answer is
listed only if its place is still ahead of the cursor).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from csatdist.answers import InvalidValue, parse_time
from csatdist.buckets import BUCKET_MS, MAX_TIMEFRAME_MINUTES, MINUTE_MS, window_for
from csatdist.errors import InvalidParam, InvalidRequest
from csatdist.query import Selection, parse_selection
from csatdist.store import AnswerRecord, AnswersRequest

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: The columns of a CSV export, in order (JSON and NDJSON use the same names).
CSV_COLUMNS = (
    "id",
    "time",
    "skillId",
    "agentId",
    "score",
    "conversationId",
    "comment",
    "channel",
    "updatedAt",
    "skillName",
    "agentName",
)
#: A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_MAX_CURSOR_LENGTH = 400


@dataclass(frozen=True, slots=True)
class Listing:
    """A validated listing: what to read (one page of it, or every record for an export)."""

    start_ms: int
    end_ms: int
    skills: Selection | None
    agents: Selection | None
    scores: frozenset[int] | None
    limit: int
    after: tuple[int, str] | None

    def page(self, account_id: str, after: tuple[int, str] | None = None) -> AnswersRequest:
        return AnswersRequest(
            account_id,
            self.start_ms,
            self.end_ms,
            self.skills,
            self.agents,
            self.scores,
            after if after is not None else self.after,
            self.limit,
        )


def parse_listing(
    params: Mapping[str, object],
    *,
    now_ms: int,
    retention_minutes: int,
    max_ids: int = 1000,
) -> Listing:
    """Validate the listing's parameters; raise :class:`InvalidRequest` naming every problem."""
    errors: list[InvalidParam] = []
    start_ms, end_ms = _range(params, now_ms, retention_minutes, errors)
    skills = parse_selection("skillIds", params.get("skillIds"), errors, max_ids)
    agents = parse_selection("agentIds", params.get("agentIds"), errors, max_ids)
    scores = _scores(params.get("scores"), errors)
    limit = _limit(params.get("limit"), errors)
    after = _cursor(params.get("cursor"), errors)
    if errors or start_ms is None or end_ms is None:
        raise InvalidRequest(errors)
    return Listing(start_ms, end_ms, skills, agents, scores, limit, after)


def _absent(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _range(
    params: Mapping[str, object], now_ms: int, retention_minutes: int, errors: list[InvalidParam]
) -> tuple[int | None, int | None]:
    timeframe, start, end = (params.get(n) for n in ("timeframe", "from", "to"))
    if not _absent(timeframe):
        if not (_absent(start) and _absent(end)):
            errors.append(InvalidParam("timeframe", "give either timeframe or from and to"))
            return None, None
        minutes = _small_integer(timeframe)
        if minutes is None or not 1 <= minutes <= MAX_TIMEFRAME_MINUTES:
            errors.append(
                InvalidParam("timeframe", f"must be whole minutes, 1 to {MAX_TIMEFRAME_MINUTES}")
            )
            return None, None
        window = window_for(now_ms, minutes)
        return window.start_ms, window.end_ms
    if _absent(start) or _absent(end):
        errors.append(
            InvalidParam("timeframe", "is required, or from and to (RFC 3339 or epoch ms)")
        )
        return None, None
    bounds = [_instant(name, value, errors) for name, value in (("from", start), ("to", end))]
    start_ms, end_ms = bounds
    if start_ms is None or end_ms is None:
        return None, None
    # A window the distribution showed a moment ago may start up to a bucket before the
    # retention by now (a 1440-minute window starts at a bucket boundary up to 1445 minutes
    # back): it stays listable, so a page opened on it can still be turned.
    oldest = now_ms - retention_minutes * MINUTE_MS - BUCKET_MS
    if end_ms <= start_ms:
        errors.append(InvalidParam("to", "must be later than from"))
    elif start_ms < oldest:
        errors.append(
            InvalidParam(
                "from", f"is before the retention of {retention_minutes} minutes ({oldest} ms)"
            )
        )
    else:
        return start_ms, end_ms
    return None, None


def _instant(name: str, value: object, errors: list[InvalidParam]) -> int | None:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = _small_integer(value)
        if number is None:
            errors.append(InvalidParam(name, "is not a valid epoch millisecond time"))
        return number
    try:
        return parse_time(value, name)
    except InvalidValue as exc:
        errors.append(InvalidParam(name, str(exc).removeprefix(f"{name} ")))
        return None


def _small_integer(value: object) -> int | None:
    """An integer of at most 19 digits from a number or a string (longer: None, never int()
    of thousands of digits)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        digits = text.removeprefix("-")
        if digits.isdigit() and len(digits) <= 19:
            return int(text)
    return None


def _scores(value: object, errors: list[InvalidParam]) -> frozenset[int] | None:
    if _absent(value):
        return None
    parts = str(value).split(",") if not isinstance(value, list) else value
    scores = set()
    for part in parts:
        score = _small_integer(part.strip() if isinstance(part, str) else part)
        if score is None or not 1 <= score <= 5:
            errors.append(InvalidParam("scores", "must be scores 1 to 5, comma-separated"))
            return None
        scores.add(score)
    return frozenset(scores)


def _limit(value: object, errors: list[InvalidParam]) -> int:
    if _absent(value):
        return DEFAULT_LIMIT
    limit = _small_integer(value)
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        errors.append(InvalidParam("limit", f"must be a whole number from 1 to {MAX_LIMIT}"))
        return DEFAULT_LIMIT
    return limit


def encode_cursor(record: AnswerRecord) -> str:
    """An opaque cursor naming ``record``'s place in listing order."""
    return base64.urlsafe_b64encode(orjson.dumps([record.time_ms, record.answer_id])).decode()


def _cursor(value: object, errors: list[InvalidParam]) -> tuple[int, str] | None:
    if _absent(value):
        return None
    invalid = InvalidParam("cursor", "is not a cursor this server gave (use the reply's next)")
    if not isinstance(value, str) or len(value) > _MAX_CURSOR_LENGTH:
        errors.append(invalid)
        return None
    try:
        place = orjson.loads(base64.urlsafe_b64decode(value.strip().encode()))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        errors.append(invalid)
        return None
    if (
        not isinstance(place, list)
        or len(place) != 2
        or not isinstance(place[0], int)
        or isinstance(place[0], bool)
        or not isinstance(place[1], str)
    ):
        errors.append(invalid)
        return None
    return place[0], place[1]


def record_json(record: AnswerRecord) -> dict[str, Any]:
    """A record as the listing shows it (times in epoch ms)."""
    return {
        "id": record.answer_id,
        "time": record.time_ms,
        "skillId": record.skill_id,
        "agentId": record.agent_id,
        "score": record.score,
        "conversationId": record.conversation_id,
        "comment": record.comment,
        "channel": record.channel,
        "updatedAt": record.updated_ms,
        "skillName": record.skill_name,
        "agentName": record.agent_name,
    }


def page_json(records: list[AnswerRecord], limit: int) -> dict[str, Any]:
    """A JSON page; ``next`` is None when this page is the last."""
    return {
        "answers": [record_json(r) for r in records],
        "next": encode_cursor(records[-1]) if len(records) == limit else None,
    }


def ndjson_lines(records: Iterable[AnswerRecord]) -> bytes:
    return b"".join(orjson.dumps(record_json(r)) + b"\n" for r in records)


def csv_header() -> bytes:
    return (",".join(CSV_COLUMNS) + "\r\n").encode()


def csv_lines(records: Iterable[AnswerRecord]) -> bytes:
    """CSV rows (RFC 4180), times in RFC 3339 UTC so `csatdist ingest` and spreadsheets read
    them; text cells a spreadsheet would run as a formula start with an apostrophe."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for r in records:
        writer.writerow(
            (
                _cell(r.answer_id),
                _rfc3339(r.time_ms),
                r.skill_id,
                r.agent_id,
                r.score,
                _cell(r.conversation_id),
                _cell(r.comment),
                _cell(r.channel),
                _rfc3339(r.updated_ms),
                _cell(r.skill_name),
                _cell(r.agent_name),
            )
        )
    return buffer.getvalue().encode()


def _cell(text: str | None) -> str:
    if text is None:
        return ""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _rfc3339(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
