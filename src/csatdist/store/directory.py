"""The directory's SQL (names for skill and agent ids), shared by both stores.

A name is kept with the time it was given (``updated_ms``): the directory's ``PUT`` gives it
now, an answer's ``skillName``/``agentName`` its ``updatedAt``. A later name replaces an earlier
one, so the latest answer wins and an old answer replayed never renames anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from csatdist.answers import Answer
from csatdist.directory import Directory, DirectoryUpdate
from csatdist.store.history import Run, RunMany

SKILL, AGENT = 1, 2


def read_directory(run: Run, p: str, account_id: str) -> Directory:
    skills: dict[int, str] = {}
    agents: dict[int, str] = {}
    rows = run(
        f"SELECT kind, entity_id, name FROM directory WHERE account_id = {p}"
        " ORDER BY kind, entity_id",
        (account_id,),
    )
    for kind, entity, name in rows:
        (skills if kind == SKILL else agents)[int(entity)] = name
    return Directory(skills, agents)


def _upsert(p: str) -> str:
    return (
        f"INSERT INTO directory AS d (account_id, kind, entity_id, name, updated_ms)"
        f" VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (account_id, kind, entity_id)"
        " DO UPDATE SET name = excluded.name, updated_ms = excluded.updated_ms"
        " WHERE d.updated_ms <= excluded.updated_ms"
    )


def apply_update(
    run: Run, run_many: RunMany, p: str, account_id: str, update: DirectoryUpdate, now_ms: int
) -> None:
    """Set and remove names, dated ``now_ms``."""
    named, removed = [], []
    for kind, entries in ((SKILL, update.skills), (AGENT, update.agents)):
        for entity, name in entries.items():
            if name is None:
                removed.append((account_id, kind, entity))
            else:
                named.append((account_id, kind, entity, name, now_ms))
    run_many(_upsert(p), named)
    run_many(
        f"DELETE FROM directory WHERE account_id = {p} AND kind = {p} AND entity_id = {p}",
        removed,
    )


def names_of_answers(run_many: RunMany, p: str, account_id: str, answers: Iterable[Answer]) -> None:
    """The names answers carry, each dated by its answer's ``updatedAt`` (the latest wins)."""
    latest: dict[tuple[int, int], tuple[int, str]] = {}
    for answer in answers:
        for kind, entity, name in (
            (SKILL, answer.skill_id, answer.skill_name),
            (AGENT, answer.agent_id, answer.agent_name),
        ):
            if name is not None:
                held = latest.get((kind, entity))
                if held is None or held[0] < answer.updated:
                    latest[(kind, entity)] = (answer.updated, name)
    rows: Sequence[tuple[object, ...]] = [
        (account_id, kind, entity, name, updated)
        for (kind, entity), (updated, name) in sorted(latest.items())
    ]
    run_many(_upsert(p), rows)
