"""Stream events, pure: subjects, message decoding, and mapping rejections back to messages."""

from __future__ import annotations

import orjson
import pytest

from csatdist.answers import AcceptanceWindow, Rejection, validate_all
from csatdist.events import (
    DeadLetter,
    Event,
    Unreadable,
    account_of,
    decode_event,
    header_safe,
    message_id,
    plan_batch,
)
from tests.helpers import T_13_29

PREFIX = "csat.answers"


def answer(i: int, score: int = 5) -> dict[str, object]:
    return {"id": f"a{i}", "time": T_13_29 - 60_000, "skillId": 1, "agentId": 2, "score": score}


def event(data: bytes, account: str = "acme", sequence: int = 1) -> Event:
    return Event(f"{PREFIX}.{account}", data, sequence, 1)


@pytest.mark.parametrize(
    ("subject", "account"),
    [
        ("csat.answers.acme", "acme"),
        ("csat.answers.le-88_7", "le-88_7"),
        ("csat.answers.bad!id", None),
        ("csat.answers." + "x" * 65, None),
        ("other.answers.acme", None),
        ("csat.answers.dlq.acme", None),
        ("acme", None),
    ],
)
def test_the_account_is_the_last_subject_token(subject: str, account: str | None) -> None:
    assert account_of(subject, PREFIX) == account


def test_a_message_holds_one_answer_ndjson_an_array_or_an_answers_body() -> None:
    one = orjson.dumps(answer(1))
    assert decode_event(one, 10) == [(answer(1), one)]
    ndjson = b"\n".join(orjson.dumps(answer(i)) for i in range(3)) + b"\n"
    assert [raw for raw, _ in decode_event(ndjson, 10)] == [answer(0), answer(1), answer(2)]
    array = orjson.dumps([answer(0), answer(1)])
    assert [raw for raw, _ in decode_event(array, 10)] == [answer(0), answer(1)]
    body = orjson.dumps({"answers": [answer(4)]})
    assert decode_event(body, 10) == [(answer(4), orjson.dumps(answer(4)))]
    assert decode_event(b"\xef\xbb\xbf" + one, 10) == [(answer(1), one)]  # BOM


def test_an_unreadable_ndjson_line_is_rejected_in_place_with_its_own_bytes() -> None:
    data = orjson.dumps(answer(0)) + b'\n{"id": "tr\r\n' + orjson.dumps(answer(2))
    items = decode_event(data, 10)
    assert items[0][0] == answer(0)
    assert isinstance(items[1][0], Rejection)
    assert "not valid JSON" in items[1][0].reason
    assert items[1][1] == b'{"id": "tr'
    assert items[2][0] == answer(2)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"  \n ", "empty"),
        (b"\xff\xfe garbage", "neither JSON nor NDJSON"),
        (b"not json\nnor this", "neither JSON nor NDJSON"),
        (b"\n".join(orjson.dumps(answer(i)) for i in range(4)), "4 answers in one message"),
    ],
)
def test_a_message_that_cannot_be_read_as_a_whole_is_unreadable(data: bytes, reason: str) -> None:
    with pytest.raises(Unreadable, match=reason):
        decode_event(data, 3)


def test_rejections_map_back_to_the_message_and_answer_they_came_from() -> None:
    first = event(orjson.dumps(answer(0)), sequence=7)
    second = event(
        orjson.dumps(answer(1)) + b"\n" + orjson.dumps(answer(2, score=9)) + b"\nnope",
        sequence=8,
    )
    other = event(orjson.dumps(answer(3)), account="globex", sequence=9)
    stray = Event("csat.answers.bad!id", b"{}", 10, 2)
    plan = plan_batch([first, second, stray, other], PREFIX, 100)
    assert set(plan.accounts) == {"acme", "globex"}
    assert [d.reason for d in plan.dead] == [plan.dead[0].reason]
    assert plan.dead[0].event is stray
    assert "is not csat.answers.<accountId>" in plan.dead[0].reason

    acme = plan.accounts["acme"]
    assert [index for index, _ in acme.items] == [0, 1, 2, 3]
    valid, rejected = validate_all(acme.items, AcceptanceWindow(T_13_29, 1445))
    assert [a.id for a in valid] == ["a0", "a1"]
    letters = acme.dead_letters(rejected)
    assert [(d.event.stream_sequence, d.index) for d in letters] == [(8, 1), (8, 2)]
    assert letters[0].payload == orjson.dumps(answer(2, score=9))
    assert "score must be an integer from 1 to 5" in letters[0].reason
    assert letters[1].payload == b"nope"


def test_dead_letter_subject_and_headers() -> None:
    letter = DeadLetter(event(b"x", sequence=42), "bad\r\nthing " + "y" * 600, b"x", 3)
    assert letter.subject("csat.answers.dlq") == "csat.answers.dlq.acme"
    headers = letter.headers("CSAT_ANSWERS")
    assert headers["Csat-Reason"].startswith("bad thing y")
    assert len(headers["Csat-Reason"]) == 512
    assert headers["Csat-Answer-Index"] == "3"
    assert headers["Csat-Source-Sequence"] == "42"
    assert headers["Nats-Msg-Id"] == "csatdist-dlq:CSAT_ANSWERS:42:3"
    whole = DeadLetter(event(b"x", sequence=42), "r", b"x").headers("S")
    assert "Csat-Answer-Index" not in whole
    assert whole["Nats-Msg-Id"] == "csatdist-dlq:S:42:all"
    assert header_safe("a\x00b") == "a b"


def test_message_ids_depend_on_account_and_content_only() -> None:
    assert message_id("acme", b"x") == message_id("acme", b"x")
    assert message_id("acme", b"x") != message_id("acme", b"y")
    assert message_id("acme", b"x") != message_id("globex", b"x")
