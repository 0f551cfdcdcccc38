"""Stream events: subjects, message decoding and batch planning (pure; no NATS, no store).

A message on ``<prefix>.<accountId>`` holds one answer as a JSON object, several as NDJSON (one
per line), or a JSON array or ``{"answers": [...]}`` body like the HTTP ingest. The consumer
adapter turns fetched messages into :class:`Event` values, plans them into one item list per
account (the input of :func:`csatdist.service.ingest_answers`) plus dead letters for anything
unreadable, and maps the service's rejections back to the message and line they came from.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import orjson

from csatdist.answers import Rejection
from csatdist.auth import valid_account_id
from csatdist.slicedjson import right_sized

_HEADER_UNSAFE = re.compile(r"[\r\n\x00]+")
MAX_REASON = 512

# Dead-letter headers: why, where from, and which answer of a many-answer message.
REASON_HEADER = "Csat-Reason"
INDEX_HEADER = "Csat-Answer-Index"
SOURCE_SUBJECT_HEADER = "Csat-Source-Subject"
SOURCE_SEQUENCE_HEADER = "Csat-Source-Sequence"
DELIVERIES_HEADER = "Csat-Deliveries"
MSG_ID_HEADER = "Nats-Msg-Id"


@dataclass(frozen=True, slots=True)
class Event:
    """A fetched message, as far as counting it is concerned."""

    subject: str
    data: bytes
    stream_sequence: int
    deliveries: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something that will never count: the original bytes, why, and where they came from."""

    event: Event
    reason: str
    payload: bytes
    index: int | None = None  # the answer's position in a many-answer message; None = all of it

    def subject(self, dead_letter_prefix: str) -> str:
        return f"{dead_letter_prefix}.{self.event.subject.rsplit('.', 1)[-1]}"

    def headers(self, stream: str) -> dict[str, str]:
        part = "all" if self.index is None else str(self.index)
        headers = {
            REASON_HEADER: header_safe(self.reason),
            SOURCE_SUBJECT_HEADER: self.event.subject,
            SOURCE_SEQUENCE_HEADER: str(self.event.stream_sequence),
            DELIVERIES_HEADER: str(self.event.deliveries),
            # Redelivery of the same message re-publishes the same dead letter: JetStream's
            # duplicate window drops the copy.
            MSG_ID_HEADER: f"csatdist-dlq:{stream}:{self.event.stream_sequence}:{part}",
        }
        if self.index is not None:
            headers[INDEX_HEADER] = str(self.index)
        return headers


def header_safe(text: str) -> str:
    """A header value cannot hold line breaks; reasons are also kept short."""
    text = _HEADER_UNSAFE.sub(" ", text).strip()
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def account_subject(prefix: str, account_id: str) -> str:
    return f"{prefix}.{account_id}"


def account_of(subject: str, prefix: str) -> str | None:
    """The account of ``<prefix>.<accountId>``, or None when the subject is not one."""
    head, dot, token = subject.rpartition(".")
    if not dot or head != prefix or not valid_account_id(token):
        return None
    return token


class Unreadable(Exception):
    """The message as a whole cannot be read as answers."""


def decode_event(data: bytes, max_answers: int) -> list[tuple[object | Rejection, bytes]]:
    """The raw answers of one message, each with its own bytes (for a per-answer dead letter).

    A line of an NDJSON message that is not JSON becomes a :class:`Rejection` in place.
    """
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    if not body.strip():
        raise Unreadable("message is empty")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = _NOT_JSON
    items: list[tuple[object | Rejection, bytes]]
    if document is _NOT_JSON:
        items = []
        for line in body.split(b"\n"):
            if not line.strip():
                continue
            try:
                items.append((orjson.loads(line), line.strip()))
            except orjson.JSONDecodeError as exc:
                items.append((Rejection(0, None, f"line is not valid JSON: {exc}"), line.strip()))
        if all(isinstance(raw, Rejection) for raw, _ in items):
            raise Unreadable("message is neither JSON nor NDJSON")
    elif isinstance(document, dict) and isinstance(document.get("answers"), list):
        items = [(raw, right_sized(orjson.dumps(raw))) for raw in document["answers"]]
    elif isinstance(document, list):
        items = [(raw, right_sized(orjson.dumps(raw))) for raw in document]
    else:
        items = [(document, body.strip())]
    if len(items) > max_answers:
        raise Unreadable(f"{len(items)} answers in one message; at most {max_answers} are allowed")
    return items


_NOT_JSON = object()


@dataclass(slots=True)
class AccountItems:
    """One account's answers in a batch; ``origins[i]`` says where item ``i`` came from."""

    items: list[tuple[int, object | Rejection]] = field(default_factory=list)
    origins: list[tuple[Event, int, bytes]] = field(default_factory=list)

    def add(self, event: Event, position: int, raw: object | Rejection, payload: bytes) -> None:
        index = len(self.items)
        if isinstance(raw, Rejection):
            raw = Rejection(index, None, raw.reason)
        self.items.append((index, raw))
        self.origins.append((event, position, payload))

    def dead_letters(self, rejected: list[Rejection]) -> list[DeadLetter]:
        letters = []
        for rejection in rejected:
            event, position, payload = self.origins[rejection.index]
            letters.append(DeadLetter(event, rejection.reason, payload, position))
        return letters


@dataclass(slots=True)
class BatchPlan:
    accounts: dict[str, AccountItems] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)


def plan_batch(events: list[Event], prefix: str, max_answers: int) -> BatchPlan:
    """Group a batch's answers by account, in order; unreadable messages become dead letters."""
    plan = BatchPlan()
    for event in events:
        account = account_of(event.subject, prefix)
        if account is None:
            plan.dead.append(
                DeadLetter(
                    event,
                    f"subject {event.subject!r} is not {prefix}.<accountId> with an account id "
                    "of 1-64 letters, digits, '-' or '_'",
                    event.data,
                )
            )
            continue
        try:
            decoded = decode_event(event.data, max_answers)
        except Unreadable as exc:
            plan.dead.append(DeadLetter(event, str(exc), event.data))
            continue
        target = plan.accounts.setdefault(account, AccountItems())
        for position, (raw, payload) in enumerate(decoded):
            target.add(event, position, raw, payload)
    return plan


def message_id(account_id: str, payload: bytes) -> str:
    """Publish-side de-duplication id: the same answers for the same account, the same id."""
    digest = hashlib.sha256(account_id.encode() + b"\0" + payload).hexdigest()
    return f"csatdist:{digest[:40]}"
