"""Demo data: a demo account with fresh keys, a day of simulated answers, and a live trickle.

Run again on the same database, the demo revokes its earlier keys and issues new ones (a token
cannot be printed twice: only its hash is stored, and no token is ever written to disk), and it
seeds only the time since the latest answer stored, so restarts do not pile answers up.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

from csatdist.buckets import MINUTE_MS
from csatdist.keys import issue_key
from csatdist.service import IngestReport, ingest_answers
from csatdist.store import Store

DEMO_SKILLS = (11, 12, 13, 14, 15, -1)
DEMO_AGENTS = tuple(range(1001, 1021))
#: Scores 5, 4, 3, 2, 1 in 55/20/10/5/10 %, a typical contact-centre spread.
_SCORES = (5, 4, 3, 2, 1)
_SCORE_WEIGHTS = (55, 20, 10, 5, 10)
DEMO_LABEL = "demo"
DAY_MS = 24 * 60 * MINUTE_MS
#: Simulated answers per day of history.
ANSWERS_PER_DAY = 5000


@dataclass(frozen=True, slots=True)
class DemoKeys:
    account_id: str
    read_token: str
    write_token: str
    #: Demo keys of earlier runs revoked now.
    revoked: int = 0


def prepare_demo_keys(store: Store, account_id: str, now_ms: int) -> DemoKeys:
    """Revoke the demo keys of earlier runs and issue a new read key and write key."""
    revoked = 0
    for key in store.list_keys(account_id):
        if key.label == DEMO_LABEL and key.active:
            store.revoke_key(key.key_id, now_ms)
            revoked += 1
    read = issue_key(account_id, frozenset({"read"}), DEMO_LABEL, now_ms)
    write = issue_key(account_id, frozenset({"write"}), DEMO_LABEL, now_ms)
    store.add_key(read.key)
    store.add_key(write.key)
    return DemoKeys(account_id, read.token, write.token, revoked)


@dataclass(frozen=True, slots=True)
class Backfill:
    """What :func:`backfill` seeded: ``accepted`` answers from ``start_ms`` to now."""

    accepted: int
    start_ms: int
    #: True when the account already had answers and only the time since the latest was filled.
    resumed: bool


class AnswerSimulator:
    """Plausible answers: each agent works a few skills, some agents are busier than others."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - simulated data, not security
        self._serial = itertools.count()
        self._run = self._rng.getrandbits(32)
        self._agent_skills = {
            agent: self._rng.sample(DEMO_SKILLS[:-1], k=2) for agent in DEMO_AGENTS
        }
        self._agent_weights = [1 + (i % 5) for i, _ in enumerate(DEMO_AGENTS)]

    def answer(self, time_ms: int) -> dict[str, Any]:
        agent = self._rng.choices(DEMO_AGENTS, weights=self._agent_weights)[0]
        skill = self._rng.choice(self._agent_skills[agent])
        if self._rng.random() < 0.05:
            skill = -1
        return {
            "id": f"demo-{self._run:08x}-{next(self._serial)}",
            "time": time_ms,
            "skillId": None if skill == -1 else skill,
            "agentId": agent,
            "score": self._rng.choices(_SCORES, weights=_SCORE_WEIGHTS)[0],
        }

    def live_count(self) -> int:
        return self._rng.randint(1, 6)

    def between(self, start_ms: int, end_ms: int, count: int) -> list[dict[str, Any]]:
        times = sorted(self._rng.randrange(start_ms, end_ms) for _ in range(count))
        return [self.answer(t) for t in times]


def backfill(
    store: Store,
    account_id: str,
    simulator: AnswerSimulator,
    now_ms: int,
    retention_minutes: int,
    per_day: int = ANSWERS_PER_DAY,
) -> Backfill:
    """A day of history, so every timeframe shows numbers from the first query; when the
    account has answers already, only the time since the latest one, at the same rate."""
    latest = store.latest_answer_ms(account_id)
    start = now_ms - DAY_MS if latest is None else max(latest + 1, now_ms - DAY_MS)
    count = round(per_day * max(now_ms - start, 0) / DAY_MS)
    answers = simulator.between(start, now_ms, count) if count else []
    report = ingest_answers(store, account_id, enumerate(answers), now_ms, retention_minutes)
    return Backfill(report.accepted, start, resumed=latest is not None)


def trickle(
    store: Store,
    account_id: str,
    simulator: AnswerSimulator,
    now_ms: int,
    retention_minutes: int,
    period_ms: int,
) -> IngestReport:
    """A few answers from the last period, as a live feed would deliver them."""
    count = simulator.live_count()
    answers = simulator.between(now_ms - period_ms, now_ms + 1, count)
    return ingest_answers(store, account_id, enumerate(answers), now_ms, retention_minutes)
