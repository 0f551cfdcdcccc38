"""Corrections and erasures through `csatdist consume` on a real NATS JetStream (EXTENSIONS.md
section 6: corrections are exact under redelivery; an erased id is refused as ``erased``).

Corrections are published twice, and a first consumer is killed (SIGKILL) after committing its
batch and before acknowledging it, so a second consumer gets every message again. Each version
must be applied exactly once: the redelivered and repeated ones are duplicates, never a second
move of the counts. Ids erased meanwhile, arriving on the stream afterwards (redelivered, late
copies, later corrections), are refused and land in the dead-letter stream with reason
``erased``, one letter per answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from csatdist.buckets import window_for
from csatdist.clock import system_clock_ms
from csatdist.distribution import Grouping
from csatdist.service import ingest_answers
from csatdist.store import AnswersRequest, CountsRequest, Store, open_store
from tests.test_stream import (
    ConsumerProcess,
    Names,
    bare_names,  # noqa: F401 (a fixture `names` needs)
    dead_letters,
    names,  # noqa: F401 (a fixture)
    publish_all,
    run,
    wait_drained,
)

pytestmark = pytest.mark.slow

ACCOUNT = "acme"
RETENTION_MINUTES = 1445
PAIRS = Grouping(by_skill=True, by_agent=True, by_interval=False)
IDS = [f"s{i}" for i in range(100)]
ERASED = IDS[40:60]


def version(index: int, number: int, base: int) -> dict[str, Any]:
    """Version ``number`` of answer ``index``: each moves it to another minute, skill, agent
    and score."""
    return {
        "id": IDS[index],
        "time": base - (index * 7 + number * 131) % 1200 * 60_000,
        "skillId": (index + number) % 4,
        "agentId": 50 + (index * 3 + number) % 5,
        "score": 1 + (index + 2 * number) % 5,
        "updatedAt": base - 3_600_000 + number * 60_000,
        "comment": f"v{number}",
    }


def ndjson(answers: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(a) for a in answers)


def versions(indexes: range, number: int, base: int) -> bytes:
    return ndjson([version(i, number, base) for i in indexes])


@pytest.fixture
def records_store(database_url: str) -> Iterator[tuple[str, Store]]:
    backend = open_store(database_url)
    yield database_url, backend
    backend.close()


@pytest.fixture
def consumers() -> Iterator[list[ConsumerProcess]]:
    """The consumer processes a test starts; any still running at its end is killed."""
    started: list[ConsumerProcess] = []
    yield started
    for consumer in started:
        if consumer.process.poll() is None:
            consumer.kill()


def listed(store: Store) -> dict[str, tuple[int, int, int, int, int]]:
    """Every record: id -> (time, skill, agent, score, updatedAt)."""
    request = AnswersRequest(ACCOUNT, 0, 2**62, limit=10_000)
    return {
        r.answer_id: (r.time_ms, r.skill_id or 0, r.agent_id or 0, r.score or 0, r.updated_ms)
        for r in store.list_answers(request)
    }


def expected_records(
    numbers: dict[int, int], base: int
) -> dict[str, tuple[int, int, int, int, int]]:
    records = {}
    for index, number in numbers.items():
        a = version(index, number, base)
        records[a["id"]] = (a["time"], a["skillId"], a["agentId"], a["score"], a["updatedAt"])
    return records


def counts_by_pair(store: Store, now: int) -> dict[tuple[int, int], tuple[int, ...]]:
    rows = store.counts(CountsRequest(ACCOUNT, window_for(now, 1440), None, None, PAIRS))
    return {(r.skill_id, r.agent_id): r.counts for r in rows if any(r.counts)}  # type: ignore[misc]


def counted(records: dict[str, tuple[int, int, int, int, int]]) -> dict[Any, tuple[int, ...]]:
    pairs: dict[tuple[int, int], list[int]] = {}
    for _, skill, agent, score, _ in records.values():
        pairs.setdefault((skill, agent), [0] * 5)[score - 1] += 1
    return {pair: tuple(c) for pair, c in pairs.items()}


def test_redelivered_and_repeated_corrections_apply_once_and_erased_ids_are_dead_lettered(
    names: Names,  # noqa: F811
    records_store: tuple[str, Store],
    consumers: list[ConsumerProcess],
    tmp_path: Path,
) -> None:
    database_url, store = records_store
    base = system_clock_ms()
    originals = [(n, version(n, 1, base)) for n in range(100)]
    seeded = ingest_answers(store, ACCOUNT, originals, base, RETENTION_MINUTES)
    assert seeded.accepted == 100

    # Corrections to v2 (published twice), to v3, and late copies of originals.
    run(
        publish_all(
            names,
            [
                (ACCOUNT, versions(range(0, 50), 2, base)),
                (ACCOUNT, versions(range(0, 50), 2, base)),
                (ACCOUNT, versions(range(0, 20), 3, base)),
                (ACCOUNT, versions(range(50, 60), 1, base)),
            ],
        )
    )
    first = ConsumerProcess(names, database_url, tmp_path / "first.log", "--pause-before-ack", "60")
    consumers.append(first)
    first.wait_for_log("pausing before acknowledging")
    numbers = {n: 3 if n < 20 else 2 if n < 50 else 1 for n in range(100)}
    assert listed(store) == expected_records(numbers, base)  # committed, all four messages...
    first.kill()  # ...and never acknowledged: all four come again

    erasure = store.erase_answers(ACCOUNT, ERASED, system_clock_ms())
    assert (len(erasure.erased), erasure.unknown) == (20, [])
    late = [version(45, 1, base), version(42, 2, base), version(41, 4, base)]
    run(
        publish_all(
            names,
            [
                *((ACCOUNT, orjson.dumps(a)) for a in late),  # erased: copies and a correction
                (ACCOUNT, versions(range(60, 70), 4, base)),  # new corrections
                (ACCOUNT, versions(range(70, 80), 1, base)),  # copies of the originals
            ],
        )
    )
    # One message per batch, so each erased answer gets its own letter whatever the batching.
    second = ConsumerProcess(names, database_url, tmp_path / "second.log", "--batch", "1")
    consumers.append(second)
    wait_drained(names)
    stats = second.terminate()

    for n in range(60, 70):
        numbers[n] = 4
    for n in range(40, 60):
        del numbers[n]
    records = listed(store)
    assert records == expected_records(numbers, base)
    assert counts_by_pair(store, system_clock_ms()) == counted(records)
    assert stats["updated"] == 10  # only the v4 corrections: every redelivered one was seen
    assert stats["accepted"] == 0
    assert stats["duplicates"] == 2 * 40 + 20 + 10
    letters = run(dead_letters(names))
    assert stats["dead_letters"] == len(letters) == 2 * 10 + 10 + 3
    refused = sorted(orjson.loads(data)["id"] for _, _, data in letters)
    assert refused == sorted([*IDS[40:50], *IDS[40:50], *IDS[50:60], "s45", "s42", "s41"])
    assert {headers["Csat-Reason"] for _, headers, _ in letters} == {"erased"}
