"""Bodies rebuilt from the entries a change touched are byte for byte the bodies built afresh,
whatever the sequence of changes (counts moving, ids appearing and going, skills emptied)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from csatdist import slicedjson
from csatdist.buckets import window_for
from csatdist.distribution import CountRow, CountTable, assemble_table, table_of
from csatdist.incremental import BodyParts, _grouped, render_body
from csatdist.query import ALL, DistributionQuery, Selection
from tests.helpers import T_13_29

WINDOW = window_for(T_13_29, 1440)
QUERIES = [
    DistributionQuery(1440, skills=ALL),
    DistributionQuery(1440, agents=ALL),
    DistributionQuery(1440, skills=ALL, agents=ALL),
    DistributionQuery(60, skills=Selection(frozenset({1, 2})), agents=ALL),
    DistributionQuery(1440),  # not built from parts: the plain path
    DistributionQuery(1440, skills=ALL, interval=60),
]

pair_ids = st.tuples(st.sampled_from([-1, 1, 2, 3, 7]), st.integers(1, 6))
score_counts = st.tuples(*[st.integers(0, 3)] * 5)
# A state: counts per (skill, agent) pair; a pair with no answers is left out.
states = st.dictionaries(pair_ids, score_counts, max_size=14)


def table(state: dict[tuple[int, int], tuple[int, ...]], query: DistributionQuery) -> CountTable:
    """The table the aggregates give: by pair for a skills query, else by agent (summed)."""
    if query.skills is None and query.agents is None:
        total = tuple(sum(c[i] for c in state.values()) for i in range(5))
        rows = [CountRow(None, None, None, total)] if any(total) else []  # type: ignore[arg-type]
        return table_of(rows) if rows else CountTable(None, None, None, np.zeros((0, 5), np.int64))
    rows = [
        CountRow(None, skill if query.skills is not None else None, agent, counts)  # type: ignore[arg-type]
        for (skill, agent), counts in state.items()
        if any(counts)
    ]
    if not rows:
        skills = np.zeros(0, np.int64) if query.skills is not None else None
        return CountTable(None, skills, np.zeros(0, np.int64), np.zeros((0, 5), np.int64))
    return table_of(rows)


@settings(max_examples=300, deadline=None)
@given(
    query=st.sampled_from(QUERIES),
    sequence=st.lists(states, min_size=1, max_size=6),
    sliced=st.booleans(),
)
def test_a_body_built_from_the_last_ones_parts_is_the_fresh_body(
    query: DistributionQuery,
    sequence: list[dict[tuple[int, int], tuple[int, ...]]],
    sliced: bool,
) -> None:
    """Also encoded in slices (a large body), here of two objects, so that these small
    bodies are cut as a large one is."""
    parts: BodyParts | None = None
    with mock.patch.object(slicedjson, "SLICE_ITEMS", 2), mock.patch.object(slicedjson, "FEW", 1):
        for state in sequence:
            counts = table(state, query)
            fresh = orjson.dumps(assemble_table(query, WINDOW, counts))
            data, parts = render_body(query, WINDOW, counts, parts, sliced=sliced)
            assert data == fresh


@settings(max_examples=200, deadline=None)
@given(
    query=st.sampled_from(QUERIES[:3]),
    start=states,
    changes=st.lists(st.tuples(pair_ids, score_counts), min_size=1, max_size=8),
)
def test_small_changes_to_known_pairs_rebuild_only_what_they_touched(
    query: DistributionQuery,
    start: dict[tuple[int, int], tuple[int, ...]],
    changes: list[tuple[tuple[int, int], tuple[int, ...]]],
) -> None:
    """The common case, a new answer for a pair already in the window: the same ids, one
    entry's counts moving. Other entries keep their very text objects."""
    state = {pair: counts for pair, counts in start.items() if any(counts)}
    _, parts = render_body(query, WINDOW, table(state, query), None)
    for pair, added in changes:
        if pair not in state:
            continue
        before = parts
        state[pair] = tuple(a + b for a, b in zip(state[pair], added, strict=True))
        counts = table(state, query)
        data, parts = render_body(query, WINDOW, counts, before)
        assert data == orjson.dumps(assemble_table(query, WINDOW, counts))
        assert parts is not None
        assert before is not None
        assert parts.nbytes() >= _characters_held(parts)  # the response memory's bound
        touched = 1 if any(added) else 0
        if query.skills is not None:  # the other skills' entries are the very same objects
            assert parts.pairs is not None
            assert before.pairs is not None
            kept = zip(before.pairs[1], parts.pairs[1], strict=True)
            assert sum(old is new for old, new in kept) >= len(parts.pairs[1]) - touched
        if query.agents is not None and before.agents and before.agents.pieces is not None:
            assert parts.agents is not None
            assert parts.agents.pieces is not None
            kept = zip(before.agents.pieces, parts.agents.pieces, strict=True)
            assert sum(old is new for old, new in kept) >= len(parts.agents.pieces) - touched


def test_rows_that_are_their_own_groups_are_not_summed_again() -> None:
    """A table of pairs grouped by pair (or of agents by agent) is its own sums; a row with
    no answers, unordered or repeated keys still go through the summing."""
    skills, agents = np.array([1, 1, 2]), np.array([3, 4, 3])
    counts = np.array([[1, 0, 0, 0, 0], [0, 2, 0, 0, 0], [0, 0, 0, 0, 5]])
    keys, sums, grouping = _grouped([skills, agents], counts, None)
    assert grouping.single
    assert sums is counts
    assert [k.tolist() for k in keys] == [[1, 1, 2], [3, 4, 3]]
    emptied = counts.copy()
    emptied[1] = 0
    keys, sums, _ = _grouped([skills, agents], emptied, grouping)
    assert [k.tolist() for k in keys] == [[1, 2], [3, 3]]
    assert sums.tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 5]]
    keys, sums, grouping = _grouped([agents], counts, None)  # agent 3 twice
    assert not grouping.single
    assert [k.tolist() for k in keys] == [[3, 4]]
    assert sums.tolist() == [[1, 0, 0, 0, 5], [0, 2, 0, 0, 0]]
    keys, sums, grouping = _grouped([np.array([2, 1, 3])], counts, None)  # not in order
    assert not grouping.single
    assert keys[0].tolist() == [1, 2, 3]
    assert sums.tolist() == [[0, 2, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 5]]


def _characters_held(parts: BodyParts) -> int:
    """The characters of every text and piece the parts hold, measured."""
    entries = [parts.agents] if parts.agents is not None else []
    pieces: list[bytes] = []
    if parts.pairs is not None:
        entries += parts.pairs[1]
        pieces += parts.pairs[2]
    for entry in entries:
        pieces += entry.pieces or []
        pieces.append(entry.text or b"")
    return sum(map(len, pieces))
