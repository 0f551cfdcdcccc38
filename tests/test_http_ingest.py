"""The ingest endpoint over HTTP (CONTRACT.md §3)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from csatdist.buckets import MINUTE_MS
from csatdist.http import create_app
from csatdist.store.sqlite import SQLiteStore
from tests.conftest import Api, add_key, make_settings
from tests.helpers import T_13_29, FakeClock, bearer


def answer(answer_id: str, **fields: object) -> dict[str, object]:
    return {"id": answer_id, "time": T_13_29, "skillId": 1, "agentId": 2, "score": 5, **fields}


def total(api: Api) -> int:
    return api.query(timeframe=1440)["metricsTotals"]["total_answers"]  # type: ignore[index, no-any-return]


def test_accepts_json(api: Api) -> None:
    assert api.ingest([answer("a"), answer("b", score=1)]) == {
        "accepted": 2,
        "updated": 0,
        "duplicates": 0,
        "rejected": [],
    }
    assert total(api) == 2


def test_accepts_ndjson(api: Api) -> None:
    body = b"\n".join(orjson.dumps(answer(f"n{i}")) for i in range(3)) + b"\n"
    response = api.client.post(
        api.ingest_url(),
        content=body,
        headers={**api.write, "Content-Type": "application/x-ndjson"},
    )
    assert response.json() == {"accepted": 3, "updated": 0, "duplicates": 0, "rejected": []}


def test_invalid_answers_never_block_valid_ones(api: Api) -> None:
    result = api.ingest(
        [
            answer("ok1"),
            answer("bad-score", score=9),
            {"id": "no-time", "score": 3},
            "not an object",
            answer("ok2", time="2026-11-27T13:00:00Z"),
            answer("too-old", time=T_13_29 - 2000 * MINUTE_MS),
            answer("future", time=T_13_29 + 6 * MINUTE_MS),
        ]
    )
    assert result["accepted"] == 2
    assert [(r["index"], r["id"]) for r in result["rejected"]] == [  # type: ignore[attr-defined]
        (1, "bad-score"),
        (2, "no-time"),
        (3, None),
        (5, "too-old"),
        (6, "future"),
    ]
    assert total(api) == 2


def test_ndjson_bad_lines_are_rejected_with_their_line_index(api: Api) -> None:
    body = orjson.dumps(answer("a")) + b"\n{oops\n" + orjson.dumps(answer("b"))
    response = api.client.post(
        api.ingest_url(),
        content=body,
        headers={**api.write, "Content-Type": "application/x-ndjson"},
    )
    result = response.json()
    assert result["accepted"] == 2
    assert result["rejected"][0]["index"] == 1
    assert "not valid JSON" in result["rejected"][0]["reason"]


def test_duplicates_count_once_within_and_across_requests(api: Api) -> None:
    first = api.ingest([answer("a"), answer("a", score=1), answer("b")])
    assert (first["accepted"], first["duplicates"]) == (2, 1)
    second = api.ingest([answer("a"), answer("c")])
    assert (second["accepted"], second["duplicates"]) == (1, 1)
    body = api.query(timeframe=60)["metricsTotals"]
    assert body["total_answers"] == 3  # type: ignore[index]
    assert body["csat_score5_answers"] == 3  # first occurrence wins  # type: ignore[index]


def test_duplicates_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    for expected in (1, 0):
        store = SQLiteStore(tmp_path / "db.sqlite")
        token = add_key(store, "acme", "write")
        with TestClient(create_app(make_settings(), store=store, clock=clock)) as client:
            response = client.post(
                "/api/account/acme/csat/answers",
                json={"answers": [answer("a")]},
                headers=bearer(token),
            )
            assert response.json()["accepted"] == expected
        store.close()


def test_same_id_in_two_accounts_counts_in_each(api: Api) -> None:
    other = bearer(add_key(api.store, "other", "write"))
    api.ingest([answer("a")])
    response = api.client.post(
        api.ingest_url("other"), json={"answers": [answer("a")]}, headers=other
    )
    assert response.json()["accepted"] == 1


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"not json", "application/json", 400),
        (b'{"answers": {}}', "application/json", 400),
        (b"", "application/json", 400),
        (b"garbage\nmore garbage", "application/x-ndjson", 400),
        (b"id,time", "text/csv", 415),
    ],
)
def test_unusable_bodies(api: Api, body: bytes, content_type: str, status: int) -> None:
    response = api.client.post(
        api.ingest_url(), content=body, headers={**api.write, "Content-Type": content_type}
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert total(api) == 0


def test_too_many_answers_is_413_and_nothing_is_written(
    store: SQLiteStore, clock: FakeClock
) -> None:
    app = create_app(make_settings(max_ingest_answers=3), store=store, clock=clock)
    token = bearer(add_key(store, "acme", "write"))
    with TestClient(app) as client:
        response = client.post(
            "/api/account/acme/csat/answers",
            json={"answers": [answer(str(i)) for i in range(4)]},
            headers=token,
        )
        assert response.status_code == 413
        assert "at most 3" in response.json()["detail"]
        ok = client.post(
            "/api/account/acme/csat/answers", json={"answers": [answer("0")]}, headers=token
        )
        assert ok.json()["accepted"] == 1


def test_too_many_bytes_is_413(store: SQLiteStore, clock: FakeClock) -> None:
    app = create_app(make_settings(max_ingest_bytes=2048), store=store, clock=clock)
    token = bearer(add_key(store, "acme", "write"))
    with TestClient(app) as client:
        big = {"answers": [answer(f"{i:0>100}") for i in range(30)]}
        response = client.post("/api/account/acme/csat/answers", json=big, headers=token)
        assert response.status_code == 413

        def chunks() -> object:
            for _ in range(10):
                yield b" " * 1000

        streamed = client.post(
            "/api/account/acme/csat/answers",
            content=chunks(),  # type: ignore[arg-type]
            headers={**token, "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413


def test_read_key_cannot_ingest(api: Api) -> None:
    response = api.client.post(api.ingest_url(), json={"answers": [answer("a")]}, headers=api.read)
    assert response.status_code == 401
    assert "'write' scope" in response.json()["detail"]


def test_other_accounts_write_key_cannot_ingest(api: Api) -> None:
    response = api.client.post(
        api.ingest_url("other"), json={"answers": [answer("a")]}, headers=api.write
    )
    assert response.status_code == 401
    assert total(api) == 0


def test_no_credentials_cannot_ingest(api: Api) -> None:
    response = api.client.post(api.ingest_url(), json={"answers": [answer("a")]})
    assert response.status_code == 401
