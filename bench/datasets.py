"""Seeded, deterministic datasets for the benchmarks (issue-sized, see docs/performance.md).

- ``small``: 1 account, 20 agents, 5 skills, 2,000 answers over 24 h.
- ``large``: 1 account, 2,000 agents, 50 skills (each agent in about 3), Zipf-skewed activity,
  1,000,000 answers over the last 24 h, scores 5/4/3/2/1 in 55/20/10/5/10 %.
- ``tenants``: 1,000 accounts x 1,000 answers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

DAY_MS = 24 * 3600 * 1000
SCORES = np.array([5, 4, 3, 2, 1])
SCORE_WEIGHTS = np.array([0.55, 0.20, 0.10, 0.05, 0.10])


@dataclass(frozen=True)
class Dataset:
    name: str
    accounts: int
    agents: int
    skills: int
    answers_per_account: int

    @property
    def total(self) -> int:
        return self.accounts * self.answers_per_account


DATASETS = {
    "small": Dataset("small", 1, 20, 5, 2_000),
    "large": Dataset("large", 1, 2_000, 50, 1_000_000),
    "tenants": Dataset("tenants", 1_000, 20, 5, 1_000),
}


def account_ids(dataset: Dataset) -> list[str]:
    return ["bench"] if dataset.accounts == 1 else [f"t{i:04d}" for i in range(dataset.accounts)]


def answers(
    dataset: Dataset, now_ms: int, seed: int = 20261127
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(account, answers) per account; every answer within the last 24 h of ``now_ms``."""
    for number, account in enumerate(account_ids(dataset)):
        rng = np.random.default_rng(seed + number)
        picker = random.Random(seed + number)
        skills_of = np.array(
            [
                picker.sample(range(1, dataset.skills + 1), min(3, dataset.skills))
                for _ in range(dataset.agents)
            ]
        )
        ranks = np.arange(1, dataset.agents + 1)
        activity = 1.0 / ranks  # Zipf: the busiest agent answers most
        activity /= activity.sum()
        n = dataset.answers_per_account
        agent_index = rng.choice(dataset.agents, size=n, p=activity)
        skill_column = rng.integers(0, skills_of.shape[1], size=n)
        skills = skills_of[agent_index, skill_column]
        times = now_ms - rng.integers(0, DAY_MS - 60_000, size=n)
        scores = rng.choice(SCORES, size=n, p=SCORE_WEIGHTS)
        yield (
            account,
            [
                {
                    "id": f"{account}-{i}",
                    "time": int(t),
                    "skillId": int(s),
                    "agentId": int(a) + 1,
                    "score": int(c),
                }
                for i, (t, s, a, c) in enumerate(
                    zip(times, skills, agent_index, scores, strict=True)
                )
            ],
        )


#: Answers per ingest batch in the ingest benchmarks (one durable commit each).
BATCH = 5000


def batches_of(rows: list[Any]) -> list[list[Any]]:
    return [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]


class IngestWorkload(NamedTuple):
    """``large``'s first answers cut into batches: ``preload`` (validated, written untimed),
    then the ``timed`` ones, validated and as NDJSON ``bodies``; ``total`` timed answers."""

    preload: list[list[Any]]
    timed: list[list[Any]]
    bodies: list[bytes]
    total: int


def ingest_workload(preload: int, count: int, now_ms: int) -> IngestWorkload:
    import orjson  # the benches' own dependency, not every dataset user's

    from csatdist.answers import AcceptanceWindow, validate_all

    ((_, rows),) = answers(DATASETS["large"], now_ms)
    rows = rows[: preload + count]
    window = AcceptanceWindow(now_ms, 1445)
    validated = [validate_all(enumerate(batch), window)[0] for batch in batches_of(rows)]
    split = preload // BATCH
    bodies = [b"\n".join(orjson.dumps(r) for r in batch) for batch in batches_of(rows[preload:])]
    return IngestWorkload(validated[:split], validated[split:], bodies, len(rows) - preload)
