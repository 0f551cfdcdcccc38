"""The retention purge keeps answer records, counts and erasure tombstones consistent
(EXTENSIONS.md section 6; CONTRACT.md section 1: buckets and keys older than the retention are
purged).

The clock walks across the retention edge in uneven steps while answers, corrections (moving
answers between old and recent buckets) and erasures keep coming, and the store is purged at
every step as the server does. After each purge every record has its counts and every count its
record (records counted per bucket, skill, agent and score equal the counters exactly, so the
listing equals the distribution for any window), and an erasure's tombstone refuses its id for
exactly the retention: after that the id may come again.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest

from csatdist.buckets import BUCKET_MS, MINUTE_MS, bucket_end_of, floor_to_bucket
from csatdist.service import ingest_answers
from csatdist.store import AnswersRequest, Store, open_store
from csatdist.store.postgres import PostgresStore
from tests.conftest import Api
from tests.helpers import POSTGRES_URL, T_13_29, assert_invariant, postgres_schema

RETENTION = 1445  # minutes, the default
QUERIES: list[dict[str, object]] = [
    {"timeframe": 1440, "skillIds": "all", "agentIds": "all"},
    {"timeframe": 60},
    {"timeframe": 5, "agentIds": "10,-1"},
]


def records_by_place(store: Store, account: str = "acme") -> Counter[tuple[int, int, int, int]]:
    records = store.list_answers(AnswersRequest(account, 0, 2**62, limit=1_000_000))
    return Counter(
        (bucket_end_of(r.time_ms), r.skill_id or 0, r.agent_id or 0, r.score or 0) for r in records
    )


def counts_by_place(store: Store, account: str = "acme") -> Counter[tuple[int, int, int, int]]:
    _, rows = store.account_snapshot(account)
    counted: Counter[tuple[int, int, int, int]] = Counter()
    for end, skill, agent, *scores in rows:
        for score, count in enumerate(scores, 1):
            assert count >= 0, (end, skill, agent, score, count)
            if count:
                counted[(end, skill, agent, score)] = count
    return counted


class Traffic:
    """Answers, corrections and erasures at the clock's current time."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.rng = random.Random(3)
        self.recorded: list[str] = []
        self.serial = 0

    def answer(self, answer_id: str, time_ms: int, updated: int | None = None) -> dict[str, Any]:
        rng = self.rng
        return {
            "id": answer_id,
            "time": time_ms,
            "skillId": rng.choice([None, 1, 2]),
            "agentId": rng.choice([None, 10, 11]),
            "score": rng.randint(1, 5),
            "updatedAt": updated,
        }

    def acceptable_time(self) -> int:
        """Anywhere the ingest accepts, often at its edges."""
        now, rng = self.api.clock(), self.rng
        oldest, newest = now - RETENTION * MINUTE_MS, now + 5 * MINUTE_MS
        return rng.choice(
            [rng.randrange(oldest, newest), oldest, oldest + rng.randrange(20 * MINUTE_MS), newest]
        )

    def new_answers(self, count: int) -> None:
        batch = []
        for _ in range(count):
            self.serial += 1
            batch.append(self.answer(f"a{self.serial}", self.acceptable_time()))
        reply = self.api.ingest(batch)
        assert reply["accepted"] == count, reply
        self.recorded += [a["id"] for a in batch]

    def corrections(self, count: int) -> None:
        """Later versions of recorded answers, moved to another acceptable time (old answers
        made recent, recent ones old)."""
        now = self.api.clock()
        chosen = self.rng.sample(self.recorded, min(count, len(self.recorded)))
        self.api.ingest([self.answer(i, self.acceptable_time(), now + 1) for i in chosen])

    def at_the_edge(self) -> int:
        """Record answers at the next bucket boundaries still accepted, and return a purge
        time whose cutoff is the first of them: that answer is the oldest kept, its bucket the
        oldest not purged."""
        boundary = floor_to_bucket(self.api.clock() - RETENTION * MINUTE_MS) + BUCKET_MS
        for k in range(3):
            self.serial += 1
            edge = self.answer(f"a{self.serial}", boundary + k * BUCKET_MS)
            assert self.api.ingest([edge])["accepted"] == 1
            self.recorded.append(edge["id"])
        return boundary + self.rng.randrange(BUCKET_MS)

    def erase(self, count: int) -> list[str]:
        chosen = self.rng.sample(self.recorded, count)
        response = self.api.client.post(
            f"/api/account/{self.api.account}/csat/erasures",
            json={"ids": chosen},
            headers=self.api.write,
        )
        assert response.status_code == 200, response.text
        for answer_id in chosen:
            self.recorded.remove(answer_id)
        return chosen


def test_purge_across_the_retention_edge_keeps_records_counts_and_tombstones_together(
    api: Api,
) -> None:
    traffic = Traffic(api)
    start = api.clock()
    traffic.new_answers(300)
    traffic.corrections(60)
    erased_first = traffic.erase(10)
    api.clock.advance(3 * 60 + 2)
    traffic.new_answers(100)
    traffic.corrections(30)
    erased_later = traffic.erase(10)
    erasures = [(start, erased_first), (api.clock(), erased_later)]

    purged_records = purged_tombstones = 0
    came_back: dict[str, list[dict[str, Any]]] = {}  # first id of an erasure -> its new copies
    while api.clock() < start + (RETENTION + 4 * 60) * MINUTE_MS:
        api.clock.advance(traffic.rng.choice([17, 47, 61, 133]) + traffic.rng.random())
        traffic.new_answers(10)
        traffic.corrections(8)
        older_than = api.clock() - RETENTION * MINUTE_MS
        for purge_at in (older_than, traffic.at_the_edge()):  # then a cutoff on an answer
            api.clock.now_ms = purge_at + RETENTION * MINUTE_MS
            result = api.store.purge(purge_at)
            purged_records += result.records
            purged_tombstones += result.tombstones
            records, cutoff = records_by_place(api.store), floor_to_bucket(purge_at)
            assert min(end for end, *_ in records) > cutoff  # expired records are gone
            # Within the retention, no record without its counts and no counts without records
            # (counts of expired buckets may stay a while, for the history roll-up).
            kept = {
                place: n for place, n in counts_by_place(api.store).items() if place[0] > cutoff
            }
            assert records == kept
        older_than = purge_at
        for params in QUERIES:
            assert_invariant(api.client, api.account, api.read, **params)

        for erased_ms, ids in erasures:  # refused for exactly the retention, then welcome again
            copies = came_back.get(ids[0]) or [traffic.answer(i, api.clock()) for i in ids]
            reply = api.ingest(copies)
            if erased_ms >= older_than:
                assert reply["accepted"] == 0, reply
                assert {r["reason"] for r in reply["rejected"]} == {"erased"}
            elif ids[0] not in came_back:
                assert reply["accepted"] == len(ids), reply
                came_back[ids[0]] = copies
                traffic.recorded += ids
            else:
                assert reply["duplicates"] == len(ids), reply
    assert set(came_back) == {erased_first[0], erased_later[0]}
    assert purged_tombstones == 20
    assert purged_records > 400  # every answer of the first hours, with its counts


def test_an_erased_answer_stays_refused_while_a_copy_of_it_is_acceptable(api: Api) -> None:
    now = api.clock()
    ahead = {"id": "ahead", "time": now + 5 * MINUTE_MS, "score": 5}  # within the clock skew
    assert api.ingest([ahead])["accepted"] == 1
    response = api.client.post(
        "/api/account/acme/csat/erasures", json={"ids": ["ahead"]}, headers=api.write
    )
    assert response.json() == {"erased": 1, "unknown": []}
    api.clock.advance(RETENTION + 1)  # the copy's time is still within the retention...
    api.store.purge(api.clock() - RETENTION * MINUTE_MS)  # ...as the server purges every minute
    reply = api.ingest([ahead])
    assert reply["rejected"] == [{"index": 0, "id": "ahead", "reason": "erased"}]
    assert api.query(timeframe=1440)["metricsTotals"]["total_answers"] == 0


@pytest.mark.postgresql
def test_a_correction_racing_the_purge_of_its_record_leaves_no_counts_without_record() -> None:
    with postgres_schema() as url:
        store = open_store(url)
        try:
            race_correction_with_purge(store, url)
        finally:
            store.close()


def race_correction_with_purge(store: Store, url: str) -> None:
    now = T_13_29
    old = {"id": "x", "time": now - RETENTION * MINUTE_MS, "score": 2}
    assert ingest_answers(store, "acme", [(0, old)], now, RETENTION).accepted == 1
    if isinstance(store, PostgresStore):
        store._fold_all()  # x is a record now, no longer in the answer log
    now += 10 * MINUTE_MS  # x has expired; the purge is under way:
    cutoff = floor_to_bucket(now - RETENTION * MINUTE_MS)
    with psycopg.connect(url, autocommit=True) as purger:
        purger.execute("DELETE FROM buckets WHERE bucket_end <= %s", (cutoff,))  # done
        purger.autocommit = False
        purger.execute("DELETE FROM answers WHERE answer_time < %s", (cutoff,))  # in progress
        # Meanwhile x is corrected into the retention.
        fixed = {**old, "time": now - MINUTE_MS, "score": 5, "updatedAt": now}
        outcome: list[Any] = []
        correction = threading.Thread(
            target=lambda: outcome.append(
                ingest_answers(store, "acme", [(0, fixed)], now, RETENTION)
            )
        )
        correction.start()
        wait_until_blocked_by(purger.info.backend_pid)
        purger.commit()
        correction.join(timeout=30)
    assert outcome, "the correction did not finish"
    listed = store.list_answers(AnswersRequest("acme", now - 60 * MINUTE_MS, now + MINUTE_MS))
    version, rows = store.account_snapshot("acme")  # and the changes the counters lack yet
    rows = [*rows, *store.account_changes("acme", version).rows]
    counted = sum(sum(r[3:]) for r in rows if r[0] > cutoff)
    assert counted == len(listed), (outcome, listed)


def wait_until_blocked_by(pid: int) -> None:
    deadline = time.monotonic() + 20
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (pid,),
            ).fetchone()
            if row and row[0]:
                return
            assert time.monotonic() < deadline, "the correction never waited for the purge"
            time.sleep(0.02)
