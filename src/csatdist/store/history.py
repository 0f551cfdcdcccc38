"""The history's SQL, shared by both stores: roll-ups, changes to rolled buckets, report sums
and the history's purge (the arithmetic is :mod:`csatdist.history`).

Each function takes ``run(sql, params) -> rows`` (or ``run_many``) bound to one transaction of
its backend, the backend's placeholder ``p`` and its way to test a column against a list
(``id_list(column, values) -> (condition, parameter)``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from csatdist.buckets import BUCKET_MS, MINUTE_MS
from csatdist.history import (
    ACCOUNT,
    AGENT,
    KINDS,
    QUARTER_MS,
    SKILL,
    TIERS,
    HistoryDeltas,
    compose,
    covering_steps,
    growing_windows,
    history_deltas,
    plan_reads,
)
from csatdist.query import Selection
from csatdist.report.assembly import GroupLimit, SumRow, SumsRequest, TooManyGroups

Run = Callable[[str, Sequence[Any]], list[Any]]
RunMany = Callable[[str, Sequence[Sequence[Any]]], None]
IdList = Callable[[str, list[int]], tuple[str, Any]]

_COUNTS = "score1, score2, score3, score4, score5"
_ADD = (
    "score1 = {t}.score1 + excluded.score1, score2 = {t}.score2 + excluded.score2,"
    " score3 = {t}.score3 + excluded.score3, score4 = {t}.score4 + excluded.score4,"
    " score5 = {t}.score5 + excluded.score5"
)
_ANSWERED = "(score1 <> 0 OR score2 <> 0 OR score3 <> 0 OR score4 <> 0 OR score5 <> 0)"
#: A roll-up step: an account's first roll-up (a day of counters) takes several short ones.
ROLL_STEP_MS = 3600_000
#: Counter rows one roll-up step reads at most (fewer buckets than an hour when they hold
#: more): a step is one transaction of the single writer on SQLite. An hour of the abuse
#: bench's 1,000,000-answer day holds 15,000 to 16,000 rows (more once its flood has added to
#: it); such an hour took about 300 ms in one transaction under load, while every other
#: account's writes waited.
ROLL_STEP_ROWS = 5_000


def add_history(run_many: RunMany, p: str, account_id: str, deltas: HistoryDeltas) -> None:
    """Add (signed) changes to the history tables."""
    params = ", ".join([p] * 10)
    run_many(
        f"INSERT INTO history AS h (account_id, tier, kind, start_ms, entity_id, {_COUNTS})"
        f" VALUES ({params}) ON CONFLICT (account_id, tier, kind, start_ms, entity_id)"
        f" DO UPDATE SET {_ADD.format(t='h')}",
        [(account_id, *row) for row in deltas.rows()],
    )
    params = ", ".join([p] * 9)
    run_many(
        f"INSERT INTO history_pairs AS h (account_id, quarter_start, skill_id, agent_id,"
        f" {_COUNTS}) VALUES ({params}) ON CONFLICT (account_id, quarter_start, skill_id,"
        f" agent_id) DO UPDATE SET {_ADD.format(t='h')}",
        [(account_id, *row) for row in deltas.pair_rows()],
    )


def rolled_through(run: Run, p: str, account_id: str) -> int:
    rows = run(f"SELECT rolled_through FROM account_versions WHERE account_id = {p}", (account_id,))
    return int(rows[0][0]) if rows else 0


def changes_to_rolled_buckets(
    run: Run, run_many: RunMany, p: str, account_id: str, rows: Sequence[Sequence[int]]
) -> None:
    """Apply the part of counter changes (bucket end, skill, agent, s1..s5) that falls on
    buckets already rolled up to the history too: a late answer, a correction, an erasure."""
    if not rows:
        return
    through = rolled_through(run, p, account_id)
    rolled = [row for row in rows if row[0] <= through]
    if rolled:
        add_history(run_many, p, account_id, history_deltas(rolled))


@functools.cache
def _roll_up_sql(p: str) -> tuple[str, ...]:
    """The statements that add the counter rows of an account's buckets ending in a range to
    the history, each tier and kind's sums and the pairs' (what :func:`history_deltas` makes of
    them, zero sums left out), each with the parameters (account, account, after, through). In
    SQL rather than Python: the statements give the GIL up once each, where reading the rows
    gave it up for each row and the Python that summed them held it (with one thread running
    Python beside it, a roll-up part of one bucket of bench/abuse.py's large day took the single
    SQLite writer about 100 ms, timed in process, every account's write waiting)."""
    start = f"(bucket_end - {BUCKET_MS})"

    def floor(step: int) -> str:  # start - start % step, as Python rounds: down, before 1970 too
        return (
            f"(CASE WHEN {start} >= 0 THEN {start} ELSE {start} - {step - 1} END / {step}) * {step}"
        )

    rows = f"FROM buckets WHERE account_id = {p} AND bucket_end > {p} AND bucket_end <= {p}"
    sums = ", ".join(f"sum(score{n})" for n in range(1, 6))
    nonzero = " OR ".join(f"sum(score{n}) <> 0" for n in range(1, 6))
    statements = []
    for minutes in TIERS:
        step = minutes * MINUTE_MS
        for kind, entity in ((ACCOUNT, "0"), (SKILL, "skill_id"), (AGENT, "agent_id")):
            statements.append(
                f"INSERT INTO history AS h (account_id, tier, kind, start_ms, entity_id, {_COUNTS})"
                f" SELECT {p}, {minutes}, {kind}, {floor(step)} AS slot,"
                f" {entity} AS entity, {sums} {rows} GROUP BY slot, entity HAVING {nonzero}"
                f" ON CONFLICT (account_id, tier, kind, start_ms, entity_id)"
                f" DO UPDATE SET {_ADD.format(t='h')}"
            )
    statements.append(
        f"INSERT INTO history_pairs AS h (account_id, quarter_start, skill_id, agent_id,"
        f" {_COUNTS}) SELECT {p}, {floor(QUARTER_MS)} AS quarter,"
        f" skill_id, agent_id, {sums} {rows} GROUP BY quarter, skill_id, agent_id"
        f" HAVING {nonzero} ON CONFLICT (account_id, quarter_start, skill_id, agent_id)"
        f" DO UPDATE SET {_ADD.format(t='h')}"
    )
    return tuple(statements)


def roll_up_step(
    run: Run,
    run_many: RunMany,
    p: str,
    account_id: str,
    up_to_ms: int,
    max_rows: int | None = None,
) -> int:
    """One roll-up transaction's work for an account: the buckets after its ``rolled_through``
    up to at most :data:`ROLL_STEP_MS` later (and ``up_to_ms``), and no more of them than hold
    ``max_rows`` rows (:data:`ROLL_STEP_ROWS` by default; one bucket at least), go to the
    history, and ``rolled_through`` moves. Returns the new ``rolled_through`` (== ``up_to_ms``
    when done). The rows are summed by the database (:func:`_roll_up_sql`)."""
    max_rows = ROLL_STEP_ROWS if max_rows is None else max_rows
    through = rolled_through(run, p, account_id)
    if through >= up_to_ms:
        return through
    if through == 0:  # the first roll-up starts at the account's oldest bucket
        first = run(f"SELECT min(bucket_end) FROM buckets WHERE account_id = {p}", (account_id,))
        through = min(up_to_ms, int(first[0][0]) - BUCKET_MS) if first and first[0][0] else up_to_ms
    step_end = min(up_to_ms, through + ROLL_STEP_MS)
    per_bucket = run(
        f"SELECT bucket_end, count(*) FROM buckets WHERE account_id = {p}"
        f" AND bucket_end > {p} AND bucket_end <= {p} GROUP BY bucket_end ORDER BY bucket_end"
        f" LIMIT {p}",  # the rows come in the key's order: the count stops past the step's
        (account_id, through, step_end, max_rows + 1),
    )
    taken = 0
    for number, (_, count) in enumerate(per_bucket):
        if number and taken + int(count) > max_rows:  # one bucket at least
            step_end = int(per_bucket[number - 1][0])
            break
        taken += int(count)
    for sql in _roll_up_sql(p):  # no rows back: run_many, with one set of parameters
        run_many(sql, [(account_id, account_id, through, step_end)])
    run(
        f"UPDATE account_versions SET rolled_through = {p} WHERE account_id = {p}"
        " RETURNING rolled_through",
        (step_end, account_id),
    )
    return step_end


def purge_history(run: Run, p: str, account_id: str, older_than_ms: int) -> int:
    """Delete an account's history rows starting before ``older_than_ms`` (run daily, a
    day's rows at a time)."""
    deleted = 0
    for tier in TIERS:
        for kind in KINDS:
            deleted += len(
                run(
                    f"DELETE FROM history WHERE account_id = {p} AND tier = {p} AND kind = {p}"
                    f" AND start_ms < {p} RETURNING 1",
                    (account_id, tier, kind, older_than_ms),
                )
            )
    deleted += len(
        run(
            f"DELETE FROM history_pairs WHERE account_id = {p} AND quarter_start < {p} RETURNING 1",
            (account_id, older_than_ms),
        )
    )
    return deleted


def report_sums(run: Run, p: str, id_list: IdList, request: SumsRequest) -> list[SumRow]:
    """The sums a report needs (:class:`csatdist.report.assembly.SumsRequest`), from the history
    and the counters after ``rolled_through``; ``run`` must read one snapshot."""
    bounds = list(request.boundaries)
    through = rolled_through(run, p, request.account_id)
    if request.limit is not None:
        _check_groups(run, p, id_list, request, request.limit, through)
    tail_sql = (
        f"SELECT bucket_end, skill_id, agent_id, {_COUNTS} FROM buckets WHERE account_id = {p}"
        f" AND bucket_end > {p} AND bucket_end <= {p}"
    )
    tail_params: list[Any] = [request.account_id, through, bounds[-1]]
    filters, filter_params = _filters(id_list, request.skills, request.agents)
    tail = [tuple(map(int, r)) for r in run(tail_sql + filters, tail_params + filter_params)]
    if request.by_skill and request.by_agent:
        return _pair_sums(run, p, request, bounds, tail, filters, filter_params)
    kind, selection, column = (
        (SKILL, request.skills, 1)
        if request.by_skill
        else (AGENT, request.agents, 2)
        if request.by_agent
        else (ACCOUNT, None, 0)
    )
    entity_filter, entity_params = _filters(id_list, selection, None, column="entity_id")
    reads = plan_reads(bounds, through)
    select = f"SELECT start_ms, entity_id, {_COUNTS} FROM history WHERE account_id = {p}"
    select += f" AND tier = {p} AND kind = {p}"
    low, high = reads.coarse_range
    coarse = run(
        select + f" AND start_ms >= {p} AND start_ms < {p}" + entity_filter,
        [request.account_id, reads.coarse_minutes, kind, low, high, *entity_params],
    )
    fine = {}
    for minutes, starts in reads.fine.items():
        condition, value = id_list("start_ms", starts)
        fine[minutes] = run(
            select + f" AND {condition}" + entity_filter,
            [request.account_id, minutes, kind, value, *entity_params],
        )
    entities, sums = compose(
        bounds,
        through,
        reads,
        coarse,
        fine,
        tail,
        (lambda row: 0) if kind == ACCOUNT else (lambda row: row[column]),
    )
    segment, entity = np.nonzero(sums.any(axis=2))
    rows = []
    for i, e, counts in zip(
        segment.tolist(), entity.tolist(), sums[segment, entity].tolist(), strict=True
    ):
        group = entities[e]
        rows.append(
            SumRow(
                i,
                group if kind == SKILL else None,
                group if kind == AGENT else None,
                tuple(counts),
            )
        )
    return rows


def _check_groups(
    run: Run, p: str, id_list: IdList, request: SumsRequest, limit: GroupLimit, through: int
) -> None:
    """Raise :class:`TooManyGroups` when the skills and agents the report would list are more
    than ``limit.most``. Each kind is counted on its own, up to ``most + 1`` ids."""
    found = [
        _ids_with_answers(run, p, id_list, request, limit, through, kind) if grouped else 0
        for kind, grouped in ((SKILL, request.by_skill), (AGENT, request.by_agent))
    ]
    if sum(found) > limit.most:
        raise TooManyGroups(*found)


def _ids_with_answers(
    run: Run,
    p: str,
    id_list: IdList,
    request: SumsRequest,
    limit: GroupLimit,
    through: int,
    kind: int,
) -> int:
    """How many skills (``kind`` SKILL) or agents of the request's population have answers in
    the limit's range, counted up to ``limit.most + 1``: the history before ``through`` and the
    counters after it, read in :func:`csatdist.history.growing_windows` from the range's first
    row, each window's distinct ids at most ``most + 1``, until more than ``most`` are seen. A
    refusal thus reads about as many rows as it takes to meet that many ids, however long the
    range and the history; a report within the limit reads its range once more.

    An id filtered by the other kind's list is counted in the pair history; otherwise in its
    kind's history, the coarsest steps that cover each window."""
    column, own, other = (
        ("skill_id", request.skills, request.agents)
        if kind == SKILL
        else ("agent_id", request.agents, request.skills)
    )
    by_pairs = other is not None and other.ids is not None
    filters, filter_params = _filters(id_list, request.skills, request.agents)
    entity_filter, entity_params = _filters(id_list, own, None, column="entity_id")
    account = request.account_id
    first = _first_quarter(run, p, account, None if by_pairs else kind, limit, through)
    if first is None:
        return 0
    seen: set[int] = set()
    for low, high in growing_windows(first, limit.to_ms):
        parts, params = [], []
        if low < through and by_pairs:
            parts.append(
                f"SELECT {column} AS id FROM history_pairs WHERE account_id = {p}"
                f" AND quarter_start >= {p} AND quarter_start < {p} AND {_ANSWERED}{filters}"
            )
            params += [account, low, high, *filter_params]
        elif low < through:
            for minutes, step_low, step_high in covering_steps(low, high):
                parts.append(
                    f"SELECT entity_id AS id FROM history WHERE account_id = {p} AND tier = {p}"
                    f" AND kind = {p} AND start_ms >= {p} AND start_ms < {p}"
                    f" AND {_ANSWERED}{entity_filter}"
                )
                params += [account, minutes, kind, step_low, step_high, *entity_params]
        if high > through:
            parts.append(
                f"SELECT {column} AS id FROM buckets WHERE account_id = {p}"
                f" AND bucket_end > {p} AND bucket_end <= {p} AND {_ANSWERED}{filters}"
            )
            params += [account, max(low, through), high, *filter_params]
        rows = run(
            f"SELECT DISTINCT id FROM ({' UNION ALL '.join(parts)}) AS answered LIMIT {p}",
            [*params, limit.most + 1],
        )
        seen.update(int(row[0]) for row in rows)
        if len(seen) > limit.most:
            break
    return len(seen)


def _first_quarter(
    run: Run, p: str, account: str, kind: int | None, limit: GroupLimit, through: int
) -> int | None:
    """The first quarter of the limit's range with a row in the history of ``kind`` (the pair
    history when None) or in the counters after ``through``; None without any. Nothing before
    it needs reading, so a range that starts long before an account's answers costs nothing
    more. One seek in each table's primary key (ORDER BY … LIMIT 1: PostgreSQL without
    statistics plans min() as a scan of the range)."""
    low, high = limit.from_ms, limit.to_ms
    starts = []
    if low < through:
        sql, params = (
            (
                f"SELECT quarter_start FROM history_pairs WHERE account_id = {p}"
                f" AND quarter_start >= {p} AND quarter_start < {p} ORDER BY quarter_start"
                " LIMIT 1",
                [account, low, high],
            )
            if kind is None
            else (
                f"SELECT start_ms FROM history WHERE account_id = {p} AND tier = {p}"
                f" AND kind = {p} AND start_ms >= {p} AND start_ms < {p} ORDER BY start_ms"
                " LIMIT 1",
                [account, TIERS[0], kind, low, high],
            )
        )
        starts += [row[0] for row in run(sql, params)]
    if high > through:
        ends = run(
            f"SELECT bucket_end FROM buckets WHERE account_id = {p} AND bucket_end > {p}"
            f" AND bucket_end <= {p} ORDER BY bucket_end LIMIT 1",
            [account, max(low, through), high],
        )
        starts += [row[0] - BUCKET_MS for row in ends]
    if not starts:
        return None
    first = int(min(starts))
    return first - first % QUARTER_MS


def _filters(
    id_list: IdList,
    skills: Selection | None,
    agents: Selection | None,
    column: str | None = None,
) -> tuple[str, list[Any]]:
    sql, params = "", []
    for name, selection in (("skill_id", skills), ("agent_id", agents)):
        if selection is not None and selection.ids is not None:
            condition, value = id_list(column or name, sorted(selection.ids))
            sql += f" AND {condition}"
            params.append(value)
    return sql, params


def _pair_sums(
    run: Run,
    p: str,
    request: SumsRequest,
    bounds: list[int],
    tail: list[tuple[int, ...]],
    filters: str,
    filter_params: list[Any],
) -> list[SumRow]:
    """By skill and agent: the pair history's quarters and the tail's buckets, by segment."""
    stored = run(
        f"SELECT quarter_start, skill_id, agent_id, {_COUNTS} FROM history_pairs"
        f" WHERE account_id = {p} AND quarter_start >= {p} AND quarter_start < {p}" + filters,
        [request.account_id, bounds[0], bounds[-1], *filter_params],
    )
    table = np.array(
        [tuple(map(int, r)) for r in stored] + [(r[0] - BUCKET_MS, *r[1:]) for r in tail],
        dtype=np.int64,
    ).reshape(-1, 8)
    segment = np.searchsorted(np.array(bounds, dtype=np.int64), table[:, 0], side="right") - 1
    keep = (segment >= 0) & (segment < len(bounds) - 1)
    keys = np.column_stack((segment, table[:, 1], table[:, 2]))[keep]
    if not len(keys):
        return []
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    sums = np.zeros((len(unique), 5), dtype=np.int64)
    np.add.at(sums, inverse.reshape(-1), table[keep, 3:])
    return [
        SumRow(int(k[0]), int(k[1]), int(k[2]), tuple(c))  # type: ignore[arg-type]
        for k, c in zip(unique.tolist(), sums.tolist(), strict=True)
        if any(c)
    ]


def import_history(
    run: Run, run_many: RunMany, p: str, account_id: str, rows: Sequence[Sequence[int]]
) -> int:
    """Add counts of answers from before the account's counters (bucket end, skill, agent,
    s1..s5) straight to the history, e.g. history kept elsewhere; rows must end before the
    account's oldest retained bucket (``ValueError`` otherwise). ``rolled_through`` moves to
    the latest row, so reports read them at once. Returns the rows added."""
    if not rows:
        return 0
    latest = max(int(row[0]) for row in rows)
    oldest = run(f"SELECT min(bucket_end) FROM buckets WHERE account_id = {p}", (account_id,))
    if oldest and oldest[0][0] is not None and latest >= int(oldest[0][0]):
        raise ValueError(
            f"history rows must end before the account's oldest retained bucket "
            f"({int(oldest[0][0])}); the latest ends at {latest}"
        )
    add_history(run_many, p, account_id, history_deltas(rows))
    run(
        f"INSERT INTO account_versions (account_id, version, rolled_through) VALUES ({p}, 0, {p})"
        " ON CONFLICT (account_id) DO UPDATE SET rolled_through = CASE"
        " WHEN account_versions.rolled_through < excluded.rolled_through"
        " THEN excluded.rolled_through ELSE account_versions.rolled_through END"
        " RETURNING rolled_through",
        (account_id, latest),
    )
    return len(rows)
