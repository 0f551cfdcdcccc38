"""Conditional GET (ETag / 304) and push updates (Server-Sent Events), over real HTTP."""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

import csatdist.http.routes.distribution as app_module
from csatdist.buckets import Window
from csatdist.conditional import etag_for, none_match
from csatdist.http import create_app
from csatdist.keys import parse_bearer
from csatdist.memo import Rendered
from csatdist.push import snapshot_of
from csatdist.store import Store, open_store
from tests.conftest import Api, add_key, make_settings
from tests.helpers import T_13_29, FakeClock, bearer, live_server

QUERY = {"v": "1", "timeframe": "60", "skillIds": "all"}


def answer(i: int, score: int = 5, minutes_ago: float = 1) -> dict[str, object]:
    return {
        "id": f"p{i}",
        "time": T_13_29 - int(minutes_ago * 60_000),
        "skillId": 3,
        "agentId": 7,
        "score": score,
    }


# --- conditional GET -------------------------------------------------------------------------


def test_etag_is_strong_and_names_the_exact_body(api: Api) -> None:
    api.ingest([answer(1)])
    response = api.client.get(api.query_url(), params=QUERY, headers=api.read)
    assert response.status_code == 200
    assert response.headers["etag"] == etag_for(response.content)
    assert not response.headers["etag"].startswith("W/")
    assert response.headers["cache-control"] == "private, no-cache"


def test_if_none_match_gives_304_until_the_body_changes(api: Api) -> None:
    api.ingest([answer(1)])
    first = api.client.get(api.query_url(), params=QUERY, headers=api.read)
    tag = first.headers["etag"]

    same = api.client.get(api.query_url(), params=QUERY, headers={**api.read, "If-None-Match": tag})
    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["etag"] == tag
    assert same.headers["x-csat-window-end"] == first.headers["x-csat-window-end"]

    api.ingest([answer(1)])  # a duplicate: nothing changes
    assert (
        api.client.get(
            api.query_url(), params=QUERY, headers={**api.read, "If-None-Match": tag}
        ).status_code
        == 304
    )

    api.ingest([answer(2, score=1)])
    changed = api.client.get(
        api.query_url(), params=QUERY, headers={**api.read, "If-None-Match": tag}
    )
    assert changed.status_code == 200
    assert changed.headers["etag"] != tag
    assert changed.json()["skillsMetricsPerAgent"]["metricsTotals"]["total_answers"] == 2


def test_the_tag_follows_the_window_as_time_passes(api: Api) -> None:
    api.ingest([answer(1, minutes_ago=50)])
    tag = api.client.get(api.query_url(), params=QUERY, headers=api.read).headers["etag"]
    api.clock.advance(0.5)  # same buckets, same body
    assert api.client.get(api.query_url(), params=QUERY, headers=api.read).headers["etag"] == tag
    api.clock.advance(15)  # the answer has left the 60-minute window: the body changed
    later = api.client.get(
        api.query_url(), params=QUERY, headers={**api.read, "If-None-Match": tag}
    )
    assert later.status_code == 200
    assert later.json()["skillsMetricsPerAgent"]["metricsTotals"]["total_answers"] == 0


def test_auth_and_parameters_come_before_the_cache(api: Api) -> None:
    api.ingest([answer(1)])
    tag = api.client.get(api.query_url(), params=QUERY, headers=api.read).headers["etag"]
    assert (
        api.client.get(api.query_url(), params=QUERY, headers={"If-None-Match": tag}).status_code
        == 401
    )
    bad = {**QUERY, "timeframe": "0"}
    assert (
        api.client.get(
            api.query_url(), params=bad, headers={**api.read, "If-None-Match": "*"}
        ).status_code
        == 400
    )


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ("*", True),
        ('"abd"', False),
        ("abc", False),
        ("", False),
        (None, False),
    ],
)
def test_if_none_match_parsing(header: str | None, matches: bool) -> None:
    assert none_match(header, '"abc"') is matches


# --- push stream -----------------------------------------------------------------------------


@dataclass
class Event:
    event: str
    data: Any
    id: str | None


class SseReader:
    """Reads one SSE response on a thread; events (and heartbeat comments) land in a queue."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.heartbeats = 0
        self.closed = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(30, read=None))
        self._response = self._client.send(
            self._client.build_request("GET", url, headers=headers), stream=True
        )
        self.status = self._response.status_code
        self.headers = self._response.headers
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        with contextlib.suppress(httpx.HTTPError, RuntimeError):
            for line in self._response.iter_lines():
                if line.startswith(":"):
                    self.heartbeats += 1
                elif line == "":
                    if "event" in fields:
                        data = fields.get("data", "")
                        self.events.put(
                            Event(fields["event"], orjson.loads(data), fields.get("id"))
                        )
                    fields = {}
                else:
                    name, _, value = line.partition(": ")
                    fields[name] = value
        self.closed.set()

    def next(self, timeout: float = 10) -> Event:
        return self.events.get(timeout=timeout)

    def none_within(self, seconds: float) -> bool:
        try:
            self.events.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self._response.close()
        self._client.close()


@dataclass
class Live:
    url: str
    store: Store
    clock: FakeClock
    read: dict[str, str]
    write: dict[str, str]

    def stream(self, **params: str) -> SseReader:
        query = "&".join(f"{k}={v}" for k, v in {"timeframe": "60", **params}.items())
        return SseReader(f"{self.url}/api/account/acme/csat/stream?{query}", self.read)

    def ingest(self, answers: list[dict[str, object]], url: str | None = None) -> None:
        response = httpx.post(
            f"{url or self.url}/api/account/acme/csat/answers",
            json={"answers": answers},
            headers=self.write,
        )
        assert response.status_code == 200, response.text

    def get(self, **params: str) -> httpx.Response:
        return httpx.get(
            f"{self.url}/operations/api/account/acme/msgcsatdistribution",
            params={"v": "1", "timeframe": "60", **params},
            headers=self.read,
        )


@contextlib.contextmanager
def serving(store: Store, clock: FakeClock, **settings: Any) -> Iterator[str]:
    values = {"stream_period_seconds": 0.1, "stream_heartbeat_seconds": 1.0, **settings}
    with live_server(create_app(make_settings(**values), store=store, clock=clock)) as url:
        yield url


@pytest.fixture
def live(store: Store) -> Iterator[Live]:
    clock = FakeClock()
    read_token = add_key(store, "acme", "read")
    with serving(store, clock, max_streams_per_account=2) as url:
        yield Live(url, store, clock, bearer(read_token), bearer(add_key(store, "acme", "write")))


def test_the_first_event_is_the_current_body_with_its_window(live: Live) -> None:
    live.ingest([answer(1)])
    reader = live.stream(skillIds="all")
    try:
        assert reader.status == 200
        assert reader.headers["content-type"].startswith("text/event-stream")
        event = reader.next()
        assert event.event == "distribution"
        plain = live.get(skillIds="all")
        assert event.data["body"] == plain.json()
        assert event.data["window"] == {
            "start": int(plain.headers["x-csat-window-start"]),
            "end": int(plain.headers["x-csat-window-end"]),
        }
        assert event.id
    finally:
        reader.close()


def test_a_change_is_pushed_and_changes_in_one_period_are_coalesced(store: Store) -> None:
    """Ten changes give at most one event per period they span (plus one for a boundary
    inside the burst), however slowly a loaded machine makes them; one event a change fails."""
    clock = FakeClock()
    period = 3.0
    read, write = add_key(store, "acme", "read"), add_key(store, "acme", "write")
    with serving(store, clock, stream_period_seconds=period) as url:
        live = Live(url, store, clock, bearer(read), bearer(write))
        reader = live.stream()
        try:
            assert reader.next().data["body"]["metricsTotals"]["total_answers"] == 0
            started = time.monotonic()
            for i in range(10):
                live.ingest([answer(i)])
            periods_spanned = math.ceil((time.monotonic() - started) / period)
            events, totals = 0, 0
            while totals < 10:
                totals = reader.next(timeout=2 * period).data["body"]["metricsTotals"][
                    "total_answers"
                ]
                events += 1
            assert events <= periods_spanned + 1, (events, periods_spanned)
            assert reader.none_within(period + 0.5)  # nothing changes: no more events
        finally:
            reader.close()


def test_heartbeats_keep_a_quiet_stream_alive(live: Live) -> None:
    reader = live.stream()
    try:
        reader.next()
        time.sleep(2.5)
        assert reader.heartbeats >= 2
        assert reader.events.empty()
    finally:
        reader.close()


def test_last_event_id_resumes_without_repeating_the_body(live: Live) -> None:
    live.ingest([answer(1)])
    first = live.stream()
    seen = first.next()
    first.close()
    query = f"{live.url}/api/account/acme/csat/stream?timeframe=60"
    resumed = SseReader(query, {**live.read, "Last-Event-ID": seen.id or ""})
    try:
        assert resumed.none_within(1.0)  # nothing changed since that event
        live.ingest([answer(2)])
        assert resumed.next().data["body"]["metricsTotals"]["total_answers"] == 2
    finally:
        resumed.close()
    stale = SseReader(query, {**live.read, "Last-Event-ID": "not-the-current-one"})
    try:
        assert stale.next().data["body"]["metricsTotals"]["total_answers"] == 2
    finally:
        stale.close()


def test_open_streams_are_capped_per_account_and_freed_on_disconnect(live: Live) -> None:
    first, second = live.stream(), live.stream()
    try:
        first.next(), second.next()
        third = live.stream()
        assert third.status == 429
        assert third.headers["content-type"] == "application/problem+json"
        third.close()
        first.close()
        deadline = time.monotonic() + 10
        while True:  # the server notices the disconnect at its next write
            again = live.stream()
            if again.status == 200:
                again.close()
                break
            again.close()
            assert time.monotonic() < deadline, "the closed stream's slot was never freed"
            time.sleep(0.2)
    finally:
        second.close()


def test_a_revoked_key_ends_the_stream(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "STREAM_RECHECK_SECONDS", 0.2)
    token = add_key(live.store, "acme", "read")
    reader = SseReader(f"{live.url}/api/account/acme/csat/stream?timeframe=60", bearer(token))
    try:
        reader.next()
        key_id = parse_bearer(token).record_id  # type: ignore[union-attr]
        assert live.store.revoke_key(key_id, T_13_29) is not None
        event = reader.next(timeout=10)
        assert event.event == "unauthorized"
        assert event.data["status"] == 401
        assert reader.closed.wait(10)
    finally:
        reader.close()


def test_stream_requests_are_authenticated_and_validated(live: Live) -> None:
    url = f"{live.url}/api/account/acme/csat/stream?timeframe=60"
    assert httpx.get(url).status_code == 401
    other = bearer(add_key(live.store, "globex", "read"))
    assert httpx.get(url, headers=other).status_code == 401
    bad = httpx.get(f"{live.url}/api/account/acme/csat/stream?timeframe=9999", headers=live.read)
    assert bad.status_code == 400
    assert bad.json()["invalid_params"][0]["name"] == "timeframe"


def test_a_change_made_through_another_replica_is_pushed(database_url: str) -> None:
    """Two servers on one database: stream from one, ingest through the other."""
    clock = FakeClock()
    first, second = open_store(database_url), open_store(database_url)
    read, write = add_key(first, "acme", "read"), add_key(first, "acme", "write")
    try:
        with serving(first, clock) as url_a, serving(second, clock) as url_b:
            live = Live(url_a, first, clock, bearer(read), bearer(write))
            reader = live.stream()
            try:
                assert reader.next().data["body"]["metricsTotals"]["total_answers"] == 0
                live.ingest([answer(1), answer(2)], url=url_b)
                pushed = reader.next(timeout=5)
                assert pushed.data["body"]["metricsTotals"]["total_answers"] == 2
            finally:
                reader.close()
    finally:
        first.close()
        second.close()


def test_an_event_wraps_the_query_body_bytes_as_one_json_document() -> None:
    """The stream frames the rendered body without re-serialising it; the result must be the
    document a JSON encoder would write."""
    body = {"metricsTotals": {"total_answers": 3, "csat_score": 0.6666666666666666}}
    rendered = Rendered(orjson.dumps(body), '"x"', Window(1_000, 301_000))
    snapshot = snapshot_of(rendered, taken=0.0)
    expected = {"window": {"start": 1_000, "end": 301_000}, "body": body}
    assert snapshot.data == orjson.dumps(expected)
    assert snapshot.event_id == etag_for(snapshot.data).strip('"')
