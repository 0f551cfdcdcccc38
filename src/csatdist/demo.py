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
from csatdist.directory import DirectoryUpdate
from csatdist.keys import issue_key
from csatdist.service import IngestReport, ingest_answers
from csatdist.store import Store

DEMO_SKILLS = (11, 12, 13, 14, 15, -1)
DEMO_AGENTS = tuple(range(1001, 1021))
SKILL_NAMES = {11: "Billing", 12: "Sales", 13: "Tech support", 14: "Returns", 15: "Onboarding"}
AGENT_NAMES = dict(
    zip(
        DEMO_AGENTS,
        (
            "Ana Lima",
            "Ben Okafor",
            "Chloé Martin",
            "Dev Patel",
            "Eva Novak",
            "Farid Haddad",
            "Grace Kim",
            "Hugo Silva",
            "Ines Costa",
            "Jonas Berg",
            "Keiko Sato",
            "Luca Rossi",
            "Maya Cohen",
            "Nils Dahl",
            "Olga Petrova",
            "Priya Nair",
            "Quentin Roy",
            "Rosa Díaz",
            "Sam Taylor",
            "Tariq Aziz",
        ),
        strict=True,
    )
)
_CHANNELS = ("web", "whatsapp", "sms")
_CHANNEL_WEIGHTS = (60, 25, 15)
#: What customers write, by score: about a third of the answers carry a comment.
_COMMENTS = {
    5: (
        "Solved in minutes, thank you!",
        "Very friendly and clear.",
        "Perfect, exactly what I needed.",
    ),
    4: ("Good help, a bit slow at first.", "Fine, thanks.", "Helpful answer."),
    3: ("It took a while.", "OK, but I had to repeat myself.", "Average."),
    2: ("Waited too long for a reply.", "Had to explain twice.", "Not really solved."),
    1: ("Nobody understood my problem.", "Waited 40 minutes, then got cut off.", "Useless."),
}
#: History seeded for reports on a new demo account: days before the live day, answers a day.
HISTORY_DAYS = 60
HISTORY_PER_DAY = 1500
#: Scores 5, 4, 3, 2, 1 in 55/20/10/5/10 %, a typical contact-centre spread.
_SCORES = (5, 4, 3, 2, 1)
_SCORE_WEIGHTS = (55, 20, 10, 5, 10)
DEMO_LABEL = "demo"
#: Contact-centre hours: quiet at night (UTC), busiest mid-morning and mid-afternoon.
_HOUR_WEIGHTS = (1, 1, 1, 1, 1, 2, 4, 8, 12, 14, 14, 12, 10, 12, 14, 14, 12, 10, 8, 6, 4, 3, 2, 1)
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
        agent, skill, score = self._pick()
        serial = next(self._serial)
        answer: dict[str, Any] = {
            "id": f"demo-{self._run:08x}-{serial}",
            "time": time_ms,
            "skillId": None if skill == -1 else skill,
            "agentId": agent,
            "score": score,
            "conversationId": f"conv-{self._run:08x}-{serial}",
            "channel": self._rng.choices(_CHANNELS, weights=_CHANNEL_WEIGHTS)[0],
            "agentName": AGENT_NAMES[agent],
        }
        if skill != -1:
            answer["skillName"] = SKILL_NAMES[skill]
        if self._rng.random() < 0.35:
            answer["comment"] = self._rng.choice(_COMMENTS[score])
        return answer

    def _pick(self, slide: float = 0.0) -> tuple[int, int, int]:
        """An agent, a skill and a score; ``slide`` (0..1) worsens the scores of Returns."""
        agent = self._rng.choices(DEMO_AGENTS, weights=self._agent_weights)[0]
        skill = self._rng.choice(self._agent_skills[agent])
        if self._rng.random() < 0.05:
            skill = -1
        score = self._rng.choices(_SCORES, weights=_SCORE_WEIGHTS)[0]
        if skill == 14 and score >= 4 and self._rng.random() < slide * 0.5:
            score = self._rng.choice((1, 2, 3))
        return agent, skill, score

    def history(self, end_ms: int, days: int, per_day: int) -> list[tuple[int, ...]]:
        """Counts of ``days`` before ``end_ms`` as 5-minute bucket rows (bucket end, skill,
        agent, s1..s5): busier on weekdays and in daytime (UTC), with Returns sliding over the
        last weeks — something for reports to show."""
        counts: dict[tuple[int, int, int], list[int]] = {}
        start = end_ms - days * DAY_MS
        for day in range(days):
            day_start = start + day * DAY_MS
            weekday = (day_start // DAY_MS + 3) % 7 < 5  # 1970-01-01 was a Thursday
            slide = max(0.0, (day - days + 21) / 21)  # the last three weeks
            for _ in range(per_day if weekday else per_day // 3):
                hour = self._rng.choices(range(24), weights=_HOUR_WEIGHTS)[0]
                time_ms = day_start + hour * 3_600_000 + self._rng.randrange(3_600_000)
                if time_ms >= end_ms:
                    continue
                agent, skill, score = self._pick(slide)
                key = (time_ms - time_ms % (5 * MINUTE_MS) + 5 * MINUTE_MS, skill, agent)
                counts.setdefault(key, [0, 0, 0, 0, 0])[score - 1] += 1
        return [(*key, *c) for key, c in sorted(counts.items())]

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


def seed_history(
    store: Store,
    account_id: str,
    simulator: AnswerSimulator,
    now_ms: int,
    retention_minutes: int,
    days: int = HISTORY_DAYS,
    per_day: int = HISTORY_PER_DAY,
) -> int:
    """Weeks of history before the retained day, for reports — on a new account only (history
    can only go before an account's counters); the names of its skills and agents too. Returns
    the days seeded (0 when the account had answers already)."""
    if store.latest_answer_ms(account_id) is not None:
        return 0
    end = now_ms - retention_minutes * MINUTE_MS
    end -= end % (5 * MINUTE_MS)
    store.import_history(account_id, simulator.history(end, days, per_day))
    store.update_directory(
        account_id, DirectoryUpdate(dict(SKILL_NAMES), dict(AGENT_NAMES)), now_ms
    )
    return days


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
