"""CSAT answers: decoding request bodies and validating each answer (pure; ``now`` passed in).

Rules are CONTRACT.md sections 1 and 3. A body that cannot be read at all is an
:class:`InvalidRequest`; a single bad answer becomes a :class:`Rejection` with its index and
reason and never blocks the valid ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from csatdist.buckets import CLOCK_SKEW_MS, MINUTE_MS, bucket_end_of
from csatdist.directory import name_problem
from csatdist.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from csatdist.query import INT64_MAX, INT64_MIN

MAX_ID_LENGTH = 128
UNASSIGNED = -1
#: The optional text fields of an answer record and their longest allowed length, in code
#: points (EXTENSIONS.md section 6). Names follow the directory's rule.
TEXT_FIELDS = {"conversationId": 128, "comment": 2000, "channel": 64}

NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
JSON_TYPES = frozenset({"application/json", ""})

#: RFC 3339 allows any number of fractional digits; beyond milliseconds they cannot change the
#: bucket, and the whole value is bounded by :data:`MAX_TIME_LENGTH`.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
MAX_TIME_LENGTH = 64
#: A JSON string (no raw line breaks: JSON escapes them), for counting a body's values.
_JSON_STRING = re.compile(rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"')


@dataclass(slots=True)
class Answer:
    """A valid answer, ready to be counted and recorded (EXTENSIONS.md section 6). Nothing
    changes one once made; it is not a frozen dataclass only because a frozen one's
    ``__init__`` sets each of the 12 fields through ``object.__setattr__``: 4.9 µs against 0.9
    on the reference machine, per answer ingested."""

    index: int
    id: str
    time_ms: int
    skill_id: int
    agent_id: int
    score: int
    #: ``updatedAt``: when this version of the answer was made (None: at its ``time``).
    updated_ms: int | None = None
    conversation_id: str | None = None
    comment: str | None = None
    channel: str | None = None
    skill_name: str | None = None
    agent_name: str | None = None

    @property
    def bucket_end(self) -> int:
        return bucket_end_of(self.time_ms)

    @property
    def updated(self) -> int:
        """When this version was made, in ms: a later version of an id corrects an earlier."""
        return self.time_ms if self.updated_ms is None else self.updated_ms


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    id: str | None
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class AcceptanceWindow:
    """Answers are accepted when ``now - retention <= time <= now + clock skew``."""

    now_ms: int
    retention_minutes: int
    oldest_ms: int = field(init=False)  # the bounds, worked out once for a whole batch
    newest_ms: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "oldest_ms", self.now_ms - self.retention_minutes * MINUTE_MS)
        object.__setattr__(self, "newest_ms", self.now_ms + CLOCK_SKEW_MS)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidValue(Exception):
    """A value breaking a rule; its message says which and why."""


def parse_time(value: object, name: str = "time") -> int:
    """Epoch ms from an integer or an RFC 3339 string with an offset; :class:`InvalidValue`
    naming ``name`` otherwise."""
    if isinstance(value, bool):
        raise InvalidValue(f"{name} must be epoch milliseconds (integer) or an RFC 3339 string")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_TIME_LENGTH:
            raise InvalidValue(f"{name} is longer than {MAX_TIME_LENGTH} characters")
        if not _RFC3339.fullmatch(text):
            raise InvalidValue(
                f"{name} {value[:40]!r} is not RFC 3339 with an offset (e.g. 2026-11-27T13:29:00Z)"
            )
        try:
            moment = datetime.fromisoformat(_trim_fraction(text.upper()))
        except ValueError as exc:
            raise InvalidValue(f"{name} {value[:40]!r} is not a valid date-time: {exc}") from None
        return (moment - _EPOCH) // timedelta(milliseconds=1)
    raise InvalidValue(f"{name} must be epoch milliseconds (integer) or an RFC 3339 string")


def _trim_fraction(text: str) -> str:
    """datetime parses at most microseconds; RFC 3339 allows more digits, which we truncate."""
    match = re.search(r"\.(\d+)", text)
    if match and len(match.group(1)) > 6:
        text = text[: match.start(1) + 6] + text[match.end(1) :]
    return text


def _parse_entity_id(name: str, value: object) -> int:
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:  # the usual case, first
        return value
    if value is None:
        return UNASSIGNED
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"{name} must be an integer (int64) or null")
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidValue(f"{name} {value} is outside the int64 range")
    return value


def validate_answer(index: int, raw: object, window: AcceptanceWindow) -> Answer | Rejection:
    """Check one decoded answer against every rule; the first broken rule is the reason."""
    if not isinstance(raw, dict):
        return Rejection(index, None, f"answer must be a JSON object, got {type(raw).__name__}")
    answer_id = raw.get("id")
    shown_id = answer_id if isinstance(answer_id, str) else None
    try:
        if not isinstance(answer_id, str) or not 1 <= len(answer_id) <= MAX_ID_LENGTH:
            raise InvalidValue(f"id must be a string of 1 to {MAX_ID_LENGTH} characters")
        if "\x00" in answer_id:  # no store keeps it faithfully (PostgreSQL text refuses it)
            raise InvalidValue("id must not contain the NUL character (U+0000)")
        if "time" not in raw:
            raise InvalidValue("time is required")
        time_ms = parse_time(raw["time"])
        score = raw.get("score")
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            raise InvalidValue(f"score must be an integer from 1 to 5, got {_brief(score)}")
        skill_id = _parse_entity_id("skillId", raw.get("skillId"))
        agent_id = _parse_entity_id("agentId", raw.get("agentId"))
        if time_ms < 0:  # history's "nothing rolled up yet" is 0: earlier would count twice
            raise InvalidValue("time is before 1970-01-01T00:00:00Z (epoch milliseconds below 0)")
        if time_ms < window.oldest_ms:
            raise InvalidValue(
                f"time is older than the retention of {window.retention_minutes} minutes"
            )
        if time_ms > window.newest_ms:
            raise InvalidValue("time is more than 5 minutes in the future (clock skew limit)")
        updated_ms = None
        if raw.get("updatedAt") is not None:
            updated_ms = parse_time(raw["updatedAt"], "updatedAt")
            if updated_ms > window.newest_ms:
                raise InvalidValue(
                    "updatedAt is more than 5 minutes in the future (clock skew limit)"
                )
        answer = Answer(
            index,
            answer_id,
            time_ms,
            skill_id,
            agent_id,
            score,
            updated_ms,
            _text(raw, "conversationId"),
            _text(raw, "comment"),
            _text(raw, "channel"),
            _name(raw, "skillName"),
            _name(raw, "agentName"),
        )
    except InvalidValue as exc:
        if shown_id is not None and len(shown_id) > MAX_ID_LENGTH:
            shown_id = None
        return Rejection(index, shown_id, str(exc))
    return answer


def _text(raw: dict[str, object], name: str) -> str | None:
    """An optional text field (:data:`TEXT_FIELDS`): absent or null is None."""
    value = raw.get(name)
    if value is None:
        return None
    limit = TEXT_FIELDS[name]
    if not isinstance(value, str):
        raise InvalidValue(f"{name} must be a string or null, got {_brief(value)}")
    if len(value) > limit:
        raise InvalidValue(f"{name} is longer than {limit} characters ({len(value)})")
    if "\x00" in value:  # no store keeps it faithfully (PostgreSQL text refuses it)
        raise InvalidValue(f"{name} must not contain the NUL character (U+0000)")
    return value


def _name(raw: dict[str, object], name: str) -> str | None:
    """``skillName``/``agentName``: absent or null is None; otherwise the directory's rule."""
    value = raw.get(name)
    if value is None:
        return None
    problem = name_problem(value)
    if problem is not None:
        raise InvalidValue(f"{name} {problem}")
    return str(value)  # name_problem accepts strings only


def _brief(value: object) -> str:
    text = orjson.dumps(value, default=str).decode() if value is not None else "null"
    return text if len(text) <= 20 else text[:17] + "..."


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class DecodedBody:
    """Items in request order: a decoded answer, or a Rejection for an unreadable NDJSON line."""

    items: list[tuple[int, object | Rejection]]


def decode_body(
    body: bytes,
    content_type: str | None,
    max_answers: int,
    max_values_per_answer: int = 48,
    *,
    lines_counted: bool = False,
) -> DecodedBody:
    """Split an ingest body into raw answers. Raises only when the body as a whole is unusable.

    Work and memory are bounded before anything is decoded: at most ``max_answers`` NDJSON
    lines (twice as many counting blank ones) and ``max_answers * max_values_per_answer`` JSON
    values in all (a value of any kind, object keys included). Decoded JSON takes up to 40 times
    the bytes of its text, so a 10 MiB body could otherwise take 400 MB. ``lines_counted``: an
    NDJSON body's lines were counted as it arrived (:class:`NdjsonLines`), not again here.
    """
    kind = media_type(content_type)
    if kind not in NDJSON_TYPES and kind not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {kind!r} is not supported; use application/json "
            '({"answers": [...]}) or application/x-ndjson (one answer per line)'
        )
    check_json_values(body, max_answers * max_values_per_answer, max_answers)
    if kind in NDJSON_TYPES:
        if not lines_counted:
            NdjsonLines(max_answers).add(body)
        items = list(_ndjson_items(body))
        if items and all(isinstance(item, Rejection) for _, item in items):
            raise InvalidRequest.one("body", "no line of the NDJSON body is a JSON value")
    else:
        items = list(enumerate(_json_answers(body)))
    if len(items) > max_answers:
        raise PayloadTooLarge(
            f"{len(items)} answers in one request; at most {max_answers} are allowed"
        )
    return DecodedBody(items)


class NdjsonLines:
    """The lines of an NDJSON body, counted as its parts arrive: over twice the answers a
    request may hold (blank lines included), refused (413) at the part that passes it, before
    the rest is read."""

    def __init__(self, max_answers: int) -> None:
        self.max_answers = max_answers
        self.allowed = 2 * max_answers + 1
        self.lines = 1

    def add(self, part: bytes) -> None:
        self.lines += count_in(part, b"\n")
        if self.lines > self.allowed:
            raise PayloadTooLarge(
                f"the body has at least {self.lines} lines; at most {self.allowed} (blank ones "
                f"included) are read for the {self.max_answers} answers a request may hold"
            )


#: Bytes searched by one call of :func:`count_in`.
COUNT_SLICE = 1 << 18


def count_in(text: bytes, token: bytes) -> int:
    """``text.count(token)`` (a token that cannot overlap itself), searched
    :data:`COUNT_SLICE` bytes at a time: one call holds the GIL, and counting a 10 MB body
    at once held it 6-9 ms per character counted, each time another tenant's request waited."""
    if len(text) <= COUNT_SLICE:
        return text.count(token)
    reach = len(token) - 1  # an occurrence is counted in the slice where it starts
    return sum(
        text.count(token, start, start + COUNT_SLICE + reach)
        for start in range(0, len(text), COUNT_SLICE)
    )


def check_json_values(body: bytes, max_values: int, max_answers: int) -> None:
    """Refuse (413) a JSON or NDJSON text holding more than ``max_values`` values, counted
    without decoding it: each value but the first of a container follows a ',' or a ':', and
    each container opens with '{' or '['. Characters inside strings are not counted; strings
    are only stripped when the quick count, which includes them, is over the limit."""
    upper = _structural_count(body)
    if upper <= max_values:
        return
    quotes = count_in(body, b'"') - count_in(body, b'\\"')
    strings_at_least = quotes // 2
    if strings_at_least > max_values:
        count = strings_at_least
    else:
        bare = _JSON_STRING.sub(b'""', body)
        count = _structural_count(bare)
        if count <= max_values:
            return
    raise PayloadTooLarge(
        f"the body holds at least {count} JSON values; at most {max_values} are read per "
        f"request ({max_values // max_answers} per answer allowed): send fewer answers per "
        "request, or fewer fields per answer"
    )


def _structural_count(text: bytes) -> int:
    return sum(count_in(text, c) for c in (b",", b":", b"[", b"{")) + 1


def _strip_bom(body: bytes) -> bytes:
    return body[3:] if body.startswith(b"\xef\xbb\xbf") else body


def _json_answers(body: bytes) -> list[object]:
    body = _strip_bom(body)
    if not body.strip():
        raise InvalidRequest.one("body", 'is empty; expected {"answers": [...]}')
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest.one("body", f"is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("answers"), list):
        raise InvalidRequest.one("answers", 'body must be a JSON object {"answers": [...]}')
    answers: list[object] = document["answers"]
    return answers


def _ndjson_items(body: bytes) -> Iterator[tuple[int, object | Rejection]]:
    """One answer per non-blank line; the index is the 0-based line number."""
    for index, line in enumerate(_strip_bom(body).split(b"\n")):
        if not line.strip():
            continue
        try:
            yield index, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield index, Rejection(index, None, f"line is not valid JSON: {exc}")


def validate_all(
    decoded: Iterable[tuple[int, object | Rejection]], window: AcceptanceWindow
) -> tuple[list[Answer], list[Rejection]]:
    valid: list[Answer] = []
    rejected: list[Rejection] = []
    for index, raw in decoded:
        result = raw if isinstance(raw, Rejection) else validate_answer(index, raw, window)
        if isinstance(result, Rejection):
            rejected.append(result)
        else:
            valid.append(result)
    return valid, rejected


def bucket_deltas(answers: Iterable[Answer]) -> dict[tuple[int, int, int], list[int]]:
    """Counts to add per (bucket end, skill, agent): index 0..4 for scores 1..5."""
    deltas: dict[tuple[int, int, int], list[int]] = {}
    for answer in answers:
        key = (answer.bucket_end, answer.skill_id, answer.agent_id)
        counts = deltas.get(key)
        if counts is None:
            counts = deltas[key] = [0, 0, 0, 0, 0]
        counts[answer.score - 1] += 1
    return deltas
