"""Paging through answer records while answers keep arriving (EXTENSIONS.md section 6: "Paging is
stable while answers keep arriving (no record is skipped or repeated across pages)").

A reader pages through a listing a few records at a time over HTTP while a writer thread keeps
ingesting: new answers inside and outside the window, many at the very ``time`` of the reader's
last record with ids just before and just after its id, and corrections of records that keep
their time. After every page the writer commits at least once more before the next page is
read. Every record that was on record before the listing started and still is at the end is
listed exactly once, no id twice, nothing outside the window, and the pages, end to end, are in
listing order.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from csatdist.answers import Answer
from csatdist.buckets import MINUTE_MS, window_for
from csatdist.http import create_app
from csatdist.store import AnswersRequest, Store
from csatdist.store.sql import listing_query
from csatdist.store.sqlite import SQLiteStore, _id_list
from tests.conftest import Api, add_key, make_settings
from tests.helpers import FakeClock, assert_invariant, bearer, list_records, live_server

ACCOUNT = "acme"
INGEST = f"/api/account/{ACCOUNT}/csat/answers"
LISTING = f"/api/account/{ACCOUNT}/csat/answers"
TIMEFRAME = 60
PAGE = 7


class Writer:
    """Ingests in a loop until stopped; ``wait_for_more`` blocks until it has committed again."""

    def __init__(self, url: str, headers: dict[str, str], clock: FakeClock, ids: list[str]):
        self.url, self.headers, self.clock = url, headers, clock
        self.movable = ids  # records it corrects without moving them
        self.rng = random.Random(11)
        window = window_for(clock(), TIMEFRAME)
        self.inside = (window.start_ms, window.end_ms)
        self.cursor: tuple[int, str] | None = None  # the reader's last record
        self.new_ids: dict[str, int] = {}  # id -> time
        self.batches = 0
        self.versions: dict[str, int] = {}
        self.stopped = threading.Event()
        self.progress = threading.Condition()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _answers(self) -> list[dict[str, Any]]:
        rng, now = self.rng, self.clock()
        start, end = self.inside
        times = [rng.randrange(start, end) for _ in range(6)]
        times += [start - rng.randrange(1, 600) * MINUTE_MS, end + rng.randrange(0, 4 * MINUTE_MS)]
        answers = [self._new(f"{rng.getrandbits(40):010x}-n", t) for t in times]
        if self.cursor is not None:  # at the cursor's time, just before and just after its id
            time_ms, answer_id = self.cursor
            answers += [self._new(answer_id[:-1], time_ms), self._new(answer_id + "~", time_ms)]
            answers += [self._new(answer_id + "-n", time_ms)]
        for answer_id in rng.sample(self.movable, 4):
            number = self.versions[answer_id] = self.versions.get(answer_id, 0) + 1
            answers.append(
                {
                    "id": answer_id,
                    "time": int(answer_id.split("@")[1]),  # the same place in the listing
                    "skillId": rng.choice([1, 2, None]),
                    "agentId": rng.choice([7, 8]),
                    "score": rng.randint(1, 5),
                    "updatedAt": now + number,
                }
            )
        return answers

    def _new(self, answer_id: str, time_ms: int) -> dict[str, Any]:
        if answer_id not in self.new_ids:
            self.new_ids[answer_id] = time_ms
        return {"id": answer_id, "time": time_ms, "score": self.rng.randint(1, 5)}

    def _run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=30) as client:
                while not self.stopped.is_set():
                    response = client.post(
                        INGEST, json={"answers": self._answers()}, headers=self.headers
                    )
                    assert response.status_code == 200, response.text
                    assert response.json()["rejected"] == []
                    with self.progress:
                        self.batches += 1
                        self.progress.notify_all()
        except BaseException as exc:
            self.error = exc
            with self.progress:
                self.progress.notify_all()
            raise

    def wait_for_more(self) -> None:
        with self.progress:
            target = self.batches + 1
            while self.batches < target:
                assert self.error is None, self.error
                self.progress.wait(timeout=30)


@pytest.fixture
def served(store: Store, clock: FakeClock) -> Iterator[tuple[str, dict[str, str]]]:
    headers = bearer(add_key(store, ACCOUNT, "read,write"))
    with live_server(create_app(make_settings(), store=store, clock=clock)) as url:
        yield url, headers


def existing_records(clock: FakeClock) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Answers on record before the listing: many share a time (ties go by id), some lie
    outside the window. Returns them, the ids inside the window, and those the writer corrects
    (their id names their time)."""
    rng = random.Random(5)
    window = window_for(clock(), TIMEFRAME)
    shared_times = [rng.randrange(window.start_ms, window.end_ms) for _ in range(15)]
    answers, inside, movable = [], [], []
    for n in range(400):
        time_ms = (
            rng.choice(shared_times) if n % 3 else rng.randrange(window.start_ms, window.end_ms)
        )
        answer_id = f"{rng.getrandbits(40):010x}-s"
        if n % 8 == 0:
            answer_id = f"{answer_id}@{time_ms}"
            movable.append(answer_id)
        answers.append({"id": answer_id, "time": time_ms, "skillId": 1, "score": 1 + n % 5})
        inside.append(answer_id)
    for n in range(60):
        outside = rng.choice([window.start_ms - 1, window.end_ms, window.start_ms - 3_600_000])
        answers.append({"id": f"out-{n}", "time": outside, "score": 3})
    return answers, inside, movable


def test_paging_never_skips_or_repeats_while_answers_arrive(
    served: tuple[str, dict[str, str]], clock: FakeClock
) -> None:
    url, headers = served
    answers, inside, movable = existing_records(clock)
    window = window_for(clock(), TIMEFRAME)
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post(INGEST, json={"answers": answers}, headers=headers)
        assert response.json()["accepted"] == len(answers)

        writer = Writer(url, headers, clock, movable)
        writer.thread.start()
        pages: list[list[dict[str, Any]]] = []
        query: dict[str, Any] = {"timeframe": TIMEFRAME, "limit": PAGE}
        try:
            while True:
                writer.wait_for_more()
                response = client.get(LISTING, params=query, headers=headers)
                assert response.status_code == 200, response.text
                page = response.json()
                pages.append(page["answers"])
                if page["next"] is None:
                    break
                last = page["answers"][-1]
                writer.cursor = (last["time"], last["id"])
                query["cursor"] = page["next"]
        finally:
            writer.stopped.set()
            writer.thread.join(timeout=30)
        assert writer.error is None

        listed = [record for page in pages for record in page]
        times = Counter(r["id"] for r in listed)
        assert [i for i, n in times.items() if n > 1] == []  # no id twice
        assert sorted(set(inside) - set(times)) == []  # nothing that was there is skipped
        places = [(-r["time"], r["id"]) for r in listed]
        assert places == sorted(places)  # one listing order, end to end
        assert all(window.start_ms <= r["time"] < window.end_ms for r in listed)
        assert writer.batches > len(pages) > len(inside) // PAGE
        assert len(listed) > len(inside)  # some answers that arrived ahead were listed too

        # Once quiet, the records and the counts agree for this window and others.
        for params in ({"timeframe": TIMEFRAME}, {"timeframe": 1440, "skillIds": "all"}):
            assert_invariant(client, ACCOUNT, headers, **params)


def test_a_correction_that_moves_a_listed_record_is_the_documented_exception(api: Api) -> None:
    """docs/api.md: a correction that changes an answer's time moves its record in the
    listing order, so paging across it may show it twice (both versions) — as here — or not
    at all; every other record is listed exactly once."""
    now = api.clock()
    api.ingest([{"id": f"r{n}", "time": now - n * MINUTE_MS, "score": 4} for n in range(6)])
    query: dict[str, Any] = {"timeframe": 60, "limit": 3}
    first = api.client.get(api.ingest_url(), params=query, headers=api.read).json()
    assert [r["id"] for r in first["answers"]] == ["r0", "r1", "r2"]
    # r0, already listed, is corrected: its time moves past the cursor's place.
    moved = {"id": "r0", "time": now - 30 * MINUTE_MS, "score": 1, "updatedAt": now + 1000}
    assert api.ingest([moved])["updated"] == 1
    rest = list_records(api.client, api.account, api.read, cursor=first["next"], **query)
    assert [(r["id"], r["score"]) for r in rest if r["id"] == "r0"] == [("r0", 1)]  # again
    assert sorted(r["id"] for r in rest if r["id"] != "r0") == ["r3", "r4", "r5"]


def test_a_deep_page_reads_no_more_than_the_first(tmp_path: Path) -> None:
    """Each page seeks to its cursor: SQLite's work for the last pages of 6,000 records is no
    more than for the first (counted in virtual-machine steps, not time). Before, every page
    scanned all the records newer than its cursor, so an export of a big day was quadratic."""
    store = SQLiteStore(tmp_path / "deep.db")
    now = FakeClock()()
    answers = [Answer(i, f"a{i:05d}", now - 1 - i * 500, 1, 2, 1 + i % 5) for i in range(6_000)]
    for start in range(0, len(answers), 2_000):
        store.record_answers(ACCOUNT, answers[start : start + 2_000])
    store.close()
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    work: list[int] = []
    cursor: tuple[int, str] | None = None
    with contextlib.closing(sqlite3.connect(tmp_path / "deep.db")) as conn:
        conn.set_progress_handler(count, 100)
        while True:
            request = AnswersRequest(ACCOUNT, now - 3_600_000, now, after=cursor, limit=100)
            sql, params = listing_query(request, "?", _id_list)
            steps = 0
            rows = conn.execute(sql, params).fetchall()
            work.append(steps)
            if len(rows) < 100:
                break
            cursor = (rows[-1][1], rows[-1][0])  # (answer_time, answer_id)
    assert len(work) == 61
    assert max(work[-5:]) <= 2 * max(work[:5]) + 10, work
