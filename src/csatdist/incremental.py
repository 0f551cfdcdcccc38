"""Large response bodies rebuilt from the entries a change touched (pure).

A new answer changes one (skill, agent) pair, so of the thousands of entries of an
``agentIds=all`` or ``skillIds=all`` body one agent, one pair and one skill change. Building
every metrics object again is most of a fresh body's cost (about 6 ms of 9 for 8,000 entries on
``large``); here each entry's JSON text is kept beside the counts it was made from, and the next
body of the same query re-encodes only the entries whose counts differ, then joins the texts.

The bytes are always those of ``orjson.dumps(assemble_table(query, window, table))``: same keys,
same order, same numbers (the tests compare the two over random sequences of changes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from csatdist.buckets import Window
from csatdist.distribution import (
    CountTable,
    Groups,
    Int64Array,
    assemble_table,
    groups_of,
    id_column,
    metrics_list,
    nonzero_rows,
    run_starts,
    summed,
)
from csatdist.query import DistributionQuery
from csatdist.slicedjson import Text, dumps_sliced, object_in_slices, right_sized

#: What a kept text costs beside its characters (the bytes object and its list slot).
_BYTES_PER_PART = 41
#: Between two entries of an object: the end of one's value, the comma, the next key's quote.
_BETWEEN = b'},"'


@dataclass(frozen=True, slots=True)
class _Entries:
    """The entries of one object keyed by id, in order: the group keys they were summed by (the
    last one is the entry's id), their counts, and their text: the object's as encoded afresh,
    or, once an entry had to be replaced, cut into pieces (see :func:`_split`)."""

    keys: tuple[Int64Array, ...]
    sums: Int64Array
    text: bytes | None
    pieces: list[bytes] | None
    #: The characters of the text, or at most those of the pieces (kept: measuring thousands
    #: of pieces again at every render took a tenth of a millisecond).
    chars: int

    def parts(self) -> list[bytes]:
        """The object's text, as parts to join."""
        return [self.text] if self.text is not None else _interleaved(self.pieces or [])

    def nbytes(self) -> int:
        """At most (the pieces' characters counted as long as the whole text's)."""
        return (
            self.chars
            + _BYTES_PER_PART * len(self.pieces or ())
            + self.sums.nbytes
            + sum(k.nbytes for k in self.keys)
        )


@dataclass(frozen=True, slots=True)
class BodyParts:
    """What the next body of the same query starts from: the agents' entries, and per skill
    the entries of its agents and its piece of the skills' object (None for a section the query
    does not have)."""

    agents: _Entries | None
    pairs: tuple[_Entries, list[_Entries], list[bytes]] | None  # all pairs, per skill, pieces
    by_agent: _Grouping | None = None
    by_pair: _Grouping | None = None

    def nbytes(self) -> int:
        """The memory they hold, at most."""
        size = self.agents.nbytes() if self.agents else 0
        if self.pairs is not None:
            every, per_skill, pieces = self.pairs
            size += every.sums.nbytes + sum(k.nbytes for k in every.keys)
            size += sum(entries.nbytes() for entries in per_skill)
            size += sum(map(len, pieces)) + _BYTES_PER_PART * len(pieces)
        for grouping in (self.by_agent, self.by_pair):
            if grouping is not None:
                size += grouping.groups.order.nbytes + grouping.groups.starts.nbytes
                size += sum(column.nbytes for column in grouping.columns)
        return size


@dataclass(frozen=True, slots=True)
class _Grouping:
    """How a table's rows group by some key columns, kept with the columns (reused while the
    table's ids are the same). ``single``: one row per group, already in order (a table of
    pairs grouped by pair, or of agents by agent), so the sums are the rows themselves."""

    columns: tuple[Int64Array, ...]
    groups: Groups
    single: bool


def _grouping(columns: list[Int64Array]) -> _Grouping:
    groups = groups_of(columns)
    rows = len(groups.order)
    single = len(groups.starts) == rows and bool((groups.order == np.arange(rows)).all())
    return _Grouping(tuple(columns), groups, single)


def _grouped(
    columns: list[Int64Array], counts: Int64Array, previous: _Grouping | None
) -> tuple[list[Int64Array], Int64Array, _Grouping]:
    """:func:`~csatdist.distribution.group_sums`, without sorting again when the key columns
    are those of ``previous`` (a change of counts only: the common case), and without
    summing when each row is a group of its own."""
    if (
        previous is not None
        and len(previous.columns) == len(columns)
        and all(np.array_equal(a, b) for a, b in zip(previous.columns, columns, strict=True))
    ):
        grouping = previous
    else:
        grouping = _grouping(columns)
    if grouping.single and nonzero_rows(counts).all():  # summed would copy them as they are
        return list(columns), counts, grouping
    keys, sums = summed(grouping.groups, columns, counts)
    return keys, sums, grouping


def render_body(
    query: DistributionQuery,
    window: Window,
    table: CountTable,
    previous: BodyParts | None,
    *,
    with_parts: bool = True,
    sliced: bool = False,
) -> tuple[bytes, BodyParts | None]:
    """The response body's bytes, and the parts the next render of this query can start from.

    ``previous`` is what the last render of the same query returned (any counts, any window);
    only bodies of skill or agent entries over the whole window are built from parts, and none
    when not ``with_parts``. A ``sliced`` body (a large one) is encoded by many short calls
    (:mod:`csatdist.slicedjson`), none of which holds the GIL for long."""
    whole = not with_parts or query.interval is not None
    if whole or (query.skills is None and query.agents is None):
        body = assemble_table(query, window, table)
        return (dumps_sliced(body) if sliced else right_sized(orjson.dumps(body))), None
    counts = table.counts
    totals = orjson.dumps(metrics_list(counts.sum(axis=0, keepdims=True))[0])
    # One join for the whole body: each large intermediate text would be another copy, and
    # over the allocator's threshold (csatdist.allocator) a fresh mapping whose page faults
    # measured more than the rest of a rebuilt body.
    out = [b"{"]
    pairs = agents = by_pair = by_agent = None
    if query.skills is not None:
        columns = [id_column(table.skills, counts), id_column(table.agents, counts)]
        keys, sums, by_pair = _grouped(columns, counts, previous.by_pair if previous else None)
        pairs = _skills(keys, sums, previous.pairs if previous else None)
        out.append(b'"skillsMetricsPerAgent":{"metricsPerSkill":')
        out += _interleaved(pairs[2])
        out += [b',"metricsTotals":', totals, b"}"]
    if query.agents is not None:
        columns = [id_column(table.agents, counts)]
        keys, sums, by_agent = _grouped(columns, counts, previous.by_agent if previous else None)
        agents = _agents(keys, sums, previous.agents if previous else None)
        if len(out) > 1:
            out.append(b",")
        out.append(b'"agentsMetrics":{"metricsPerAgent":')
        out += agents.parts()
        out += [b',"metricsTotals":', totals, b"}"]
    out.append(b"}")
    return b"".join(out), BodyParts(agents, pairs, by_agent, by_pair)


def _interleaved(pieces: list[bytes]) -> list[bytes]:
    """An object's text from its pieces, as parts to join: ``{"``, the pieces with
    :data:`_BETWEEN` between them, ``}}``."""
    if not pieces:
        return [b"{}"]
    parts = [_BETWEEN] * (2 * len(pieces) + 1)
    parts[0], parts[-1] = b'{"', b"}}"
    parts[1::2] = pieces
    return parts


def _split(text: bytes) -> list[bytes]:
    """The pieces of the text of an object whose values are objects: each entry as orjson
    writes it without its first and last characters (``7":{...`` of ``"7":{...}``), the
    ``},"`` between two entries appearing nowhere else (the values hold no object)."""
    return text[2:-2].split(_BETWEEN) if len(text) > 2 else []


def _piece(entry_id: int, value: dict[str, Any]) -> bytes:
    return b'%d":%b' % (entry_id, orjson.dumps(value)[:-1])


def _same_ids(previous: _Entries, keys: list[Int64Array], rows: int) -> bool:
    return len(previous.sums) == rows and all(
        np.array_equal(old, new) for old, new in zip(previous.keys, keys, strict=True)
    )


def _new(
    keys: list[Int64Array], sums: Int64Array, values: list[dict[str, Any]] | None = None
) -> _Entries:
    """Entries encoded afresh (from their metrics objects, when made already): one orjson
    call for every :data:`~csatdist.slicedjson.SLICE_ITEMS` of them."""
    if values is None:
        values = metrics_list(sums)
    out = Text()
    object_in_slices(zip(map(str, keys[-1].tolist()), values, strict=True), len(values), out)
    text = out.joined()
    return _Entries(tuple(keys), sums, text, None, len(text))


def _replaced(
    previous: _Entries, rows: list[int], keys: list[Int64Array], sums: Int64Array
) -> _Entries:
    """``previous`` (the same ids) with the entries of ``rows`` encoded again."""
    if not rows:
        return _Entries(tuple(keys), sums, previous.text, previous.pieces, previous.chars)
    pieces = list(previous.pieces if previous.pieces is not None else _split(previous.text or b""))
    ids = keys[-1][rows].tolist()
    chars = previous.chars
    for row, entry_id, value in zip(rows, ids, metrics_list(sums[rows]), strict=True):
        chars -= len(pieces[row])
        pieces[row] = _piece(entry_id, value)
        chars += len(pieces[row])
    return _Entries(tuple(keys), sums, None, pieces, chars)


def _changed_rows(previous: _Entries, sums: Int64Array) -> Int64Array:
    return np.flatnonzero(nonzero_rows(previous.sums ^ sums))


def _agents(keys: list[Int64Array], sums: Int64Array, previous: _Entries | None) -> _Entries:
    """The agents' entries: those whose counts changed encoded again, or all when the ids
    are not those of ``previous``."""
    if previous is not None and _same_ids(previous, keys, len(sums)):
        return _replaced(previous, _changed_rows(previous, sums).tolist(), keys, sums)
    return _new(keys, sums)


def _skills(
    keys: list[Int64Array],
    sums: Int64Array,
    previous: tuple[_Entries, list[_Entries], list[bytes]] | None,
) -> tuple[_Entries, list[_Entries], list[bytes]]:
    """All pairs (their ids and counts, no text), each skill's agents' entries, and each
    skill's piece of the skills' object (its agents' object and its totals). With the same
    pairs as before, only the skills holding a pair whose counts changed are built again."""
    every = _Entries(tuple(keys), sums, b"", None, 0)
    if not len(sums):
        return every, [], []
    skill_of_pair = keys[0]
    starts = run_starts(skill_of_pair)
    bounds = [*starts.tolist(), len(sums)]
    skill_ids = skill_of_pair[starts].tolist()
    skill_totals = np.add.reduceat(sums, starts, axis=0)
    if previous is not None and _same_ids(previous[0], keys, len(sums)):
        changed = _changed_rows(previous[0], sums)
        per_skill, pieces = list(previous[1]), list(previous[2])
        rebuild = np.unique(np.searchsorted(starts, changed, side="right") - 1).tolist()
        rows = changed.tolist()
        for index, value in zip(rebuild, metrics_list(skill_totals[rebuild]), strict=True):
            a, b = bounds[index], bounds[index + 1]
            local = [row - a for row in rows if a <= row < b]
            entries = _replaced(per_skill[index], local, [k[a:b] for k in keys], sums[a:b])
            per_skill[index] = entries
            pieces[index] = _skill_piece(skill_ids[index], entries, value)
        return every, per_skill, pieces
    values = metrics_list(sums)  # at once: equal counts share one object across skills
    per_skill = [
        _new([k[a:b] for k in keys], sums[a:b], values[a:b]) for a, b in itertools.pairwise(bounds)
    ]
    pieces = [
        _skill_piece(skill, entries, value)
        for skill, entries, value in zip(
            skill_ids, per_skill, metrics_list(skill_totals), strict=True
        )
    ]
    return every, per_skill, pieces


def _skill_piece(skill_id: int, agents: _Entries, totals: dict[str, Any]) -> bytes:
    """A skill's piece of the skills' object: its agents' object and its totals."""
    return b'%d":{"metricsPerAgent":%b,"metricsTotals":%b' % (
        skill_id,
        b"".join(agents.parts()),
        orjson.dumps(totals),
    )
