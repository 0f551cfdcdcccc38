"""Answer records: what an ingest or an erasure does to the records and the counts (pure).

Rules are EXTENSIONS.md section 6. An answer whose id is new is recorded and counted. An answer
whose id is on record replaces the record when its ``updatedAt`` is strictly later than the
stored one — a correction: its counts move from the old (bucket, skill, agent, score) to the
new one — and is a duplicate otherwise. An erased id is refused as ``erased`` until its
tombstone expires. Both stores plan their writes with these functions, inside the transaction
that holds the account's write lock, so the plan and the write see the same records.

Records kept from before records existed (the migration of the id-only table) hold an id and a
time only: they still make a replayed copy a duplicate, but cannot be corrected (their counts'
place is unknown) until they expire with the retention.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from csatdist.answers import Answer, Rejection
from csatdist.buckets import bucket_end_of

#: (bucket end, skill, agent) -> signed changes of the counts of scores 1..5.
Deltas = dict[tuple[int, int, int], list[int]]

ERASED = "erased"
NOT_CORRECTABLE = (
    "this answer was counted before answer records were kept; it cannot be corrected until it "
    "expires with the retention"
)


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """What a store knows of a recorded answer: enough to move or remove its counts."""

    answer_id: str
    time_ms: int
    skill_id: int | None
    agent_id: int | None
    score: int | None
    updated_ms: int

    @property
    def counted_where(self) -> tuple[int, int, int, int] | None:
        """(bucket end, skill, agent, score) of its counts; None for a record kept from before
        records existed, whose counts' place is unknown."""
        if self.score is None or self.skill_id is None or self.agent_id is None:
            return None
        return (bucket_end_of(self.time_ms), self.skill_id, self.agent_id, self.score)


@dataclass(slots=True)
class RecordPlan:
    """What one ingest does, decided against the records as they are."""

    new: list[Answer] = field(default_factory=list)
    corrected: list[Answer] = field(default_factory=list)
    duplicates: int = 0
    refused: list[Rejection] = field(default_factory=list)
    deltas: Deltas = field(default_factory=dict)

    @property
    def changes_counts(self) -> bool:
        return any(any(counts) for counts in self.deltas.values())


def latest_versions(answers: Iterable[Answer]) -> tuple[list[Answer], int]:
    """One answer per id: the latest ``updatedAt`` wins, the first of equal ones (in request
    order). Returns them in request order, and how many were dropped as duplicates."""
    chosen: dict[str, Answer] = {}
    dropped = 0
    for answer in answers:
        held = chosen.get(answer.id)
        if held is None:
            chosen[answer.id] = answer
            continue
        dropped += 1
        if answer.updated > held.updated:
            chosen[answer.id] = answer
    return sorted(chosen.values(), key=lambda a: a.index), dropped


def plan_ingest(
    answers: Sequence[Answer], stored: Mapping[str, StoredAnswer], erased: Iterable[str]
) -> RecordPlan:
    """Classify ``answers`` (one per id) against the ``stored`` records of their ids and the
    ``erased`` ids, and sum the changes to the counts."""
    plan = RecordPlan()
    gone = set(erased)
    for answer in answers:
        if answer.id in gone:
            plan.refused.append(Rejection(answer.index, answer.id, ERASED))
            continue
        old = stored.get(answer.id)
        if old is None:
            plan.new.append(answer)
            _add(plan.deltas, _place(answer), +1)
            continue
        if answer.updated <= old.updated_ms:
            plan.duplicates += 1
            continue
        before = old.counted_where
        if before is None:
            plan.refused.append(Rejection(answer.index, answer.id, NOT_CORRECTABLE))
            continue
        plan.corrected.append(answer)
        _add(plan.deltas, before, -1)
        _add(plan.deltas, _place(answer), +1)
    return plan


def erasure_deltas(records: Iterable[StoredAnswer]) -> Deltas:
    """The counts erasing ``records`` removes (none for records kept from before records
    existed: see the module's docstring)."""
    deltas: Deltas = {}
    for record in records:
        place = record.counted_where
        if place is not None:
            _add(deltas, place, -1)
    return deltas


def delta_rows(deltas: Deltas) -> list[tuple[int, int, int, int, int, int, int, int]]:
    """The changes as (bucket end, skill, agent, s1..s5) rows, without those that cancel out
    (a correction within one bucket, skill and agent that keeps its score)."""
    return [
        (end, skill, agent, c[0], c[1], c[2], c[3], c[4])
        for (end, skill, agent), c in sorted(deltas.items())
        if any(c)
    ]


def _place(answer: Answer) -> tuple[int, int, int, int]:
    return (answer.bucket_end, answer.skill_id, answer.agent_id, answer.score)


def _add(deltas: Deltas, place: tuple[int, int, int, int], sign: int) -> None:
    end, skill, agent, score = place
    counts = deltas.setdefault((end, skill, agent), [0, 0, 0, 0, 0])
    counts[score - 1] += sign
