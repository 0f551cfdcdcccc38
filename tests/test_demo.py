"""`make demo` (`csatdist serve --demo`) started again and again on the same database."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from csatdist.buckets import MINUTE_MS
from csatdist.demo import ANSWERS_PER_DAY, DAY_MS, AnswerSimulator, backfill, prepare_demo_keys
from csatdist.store import Store
from tests.helpers import T_13_29, bearer, start_server


def test_backfill_seeds_a_day_then_only_the_gap_since_the_latest_answer(store: Store) -> None:
    first = backfill(store, "demo", AnswerSimulator(seed=1), T_13_29, 1445)
    assert (first.accepted, first.start_ms, first.resumed) == (
        ANSWERS_PER_DAY,
        T_13_29 - DAY_MS,
        False,
    )
    latest = store.latest_answer_ms("demo")
    assert latest is not None
    an_hour_later = latest + 60 * MINUTE_MS
    again = backfill(store, "demo", AnswerSimulator(seed=2), an_hour_later, 1445)
    assert again.resumed
    assert again.start_ms == latest + 1
    assert again.accepted == round(ANSWERS_PER_DAY / 24)  # an hour's worth, not a day's
    newest = store.latest_answer_ms("demo")
    assert newest is not None
    restarted_at_once = backfill(store, "demo", AnswerSimulator(seed=3), newest, 1445)
    assert restarted_at_once.accepted == 0


def test_demo_keys_of_earlier_runs_are_revoked_and_counted(store: Store) -> None:
    first = prepare_demo_keys(store, "demo", 1)
    second = prepare_demo_keys(store, "demo", 2)
    assert (first.revoked, second.revoked) == (0, 2)
    active = [k for k in store.list_keys("demo") if k.active]
    assert len(active) == 2
    assert {k.key_id for k in active} == {
        t.split("_")[1] for t in (second.read_token, second.write_token)
    }


def demo_run(database: Path, log: Path) -> tuple[Any, dict[str, Any]]:
    server = start_server(database, log, "--demo", "--json")
    printed = orjson.loads(log.read_text().splitlines()[0])
    return server, printed


def total(url: str, token: str) -> int:
    reply = httpx.get(
        f"{url}/operations/api/account/demo/msgcsatdistribution",
        params={"v": 1, "timeframe": 1440},
        headers=bearer(token),
    )
    assert reply.status_code == 200, reply.text
    count: int = reply.json()["metricsTotals"]["total_answers"]
    return count


@pytest.mark.slow
def test_a_second_demo_run_prints_working_keys_and_does_not_double_the_answers(
    tmp_path: Path,
) -> None:
    database = tmp_path / "demo.db"
    server, one = demo_run(database, tmp_path / "one.log")
    try:
        assert (one["resumed"], one["revoked_demo_keys"]) == (False, 0)
        assert one["seeded_answers"] == ANSWERS_PER_DAY
        after_first = total(server.url, one["read_token"])
        assert after_first >= ANSWERS_PER_DAY
    finally:
        server.stop()

    server, two = demo_run(database, tmp_path / "two.log")
    try:
        assert (two["resumed"], two["revoked_demo_keys"]) == (True, 2)
        assert two["seeded_answers"] < 50  # the seconds between the runs, not another day
        assert total(server.url, two["read_token"]) < after_first + 100
        write = httpx.post(
            two["ingest_url"],
            headers=bearer(two["write_token"]),
            json={"answers": [{"id": "mine", "time": int(time.time() * 1000), "score": 5}]},
        )
        assert write.json()["accepted"] == 1
        old = httpx.get(
            two["query_url"], headers=bearer(one["read_token"])
        )  # the first run's key was revoked, and the run said so
        assert old.status_code == 401
        assert old.json()["detail"] == "the key has been revoked"
    finally:
        server.stop()


@pytest.mark.slow
def test_the_second_run_says_what_it_did(tmp_path: Path) -> None:
    database = tmp_path / "demo.db"
    for name in ("one", "two"):
        server = start_server(database, tmp_path / f"{name}.log", "--demo")
        server.stop()
    lines = (tmp_path / "two.log").read_text().splitlines()
    assert lines[0].startswith("csatdist demo on http://127.0.0.1:")
    assert lines[1].startswith("  seeded ")
    assert lines[1].endswith(
        " since the latest answer stored (earlier runs' answers are kept); more arrive live"
    )
    assert lines[2] == (
        "  revoked the 2 demo keys of the previous run: use the new ones below (sign in to the "
        "dashboard again)"
    )
