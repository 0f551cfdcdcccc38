"""A large body encoded in slices is byte for byte orjson's encoding of it whole, and no slice
is encoded by one call over many objects (each call holds the interpreter: docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csatdist import slicedjson
from csatdist.slicedjson import dumps_sliced, ndjson, right_sized

ROOT = Path(__file__).resolve().parent.parent

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner, max_size=6)
    ),
    max_leaves=60,
)


def metrics(n: int) -> dict[str, Any]:
    return {"csat_1_answers": n % 7, "total_answers": n, "csat_score": n / 7}


@settings(max_examples=500, deadline=None)
@given(value=values, few=st.integers(0, 3), items=st.integers(1, 3))
def test_the_slices_join_to_orjsons_encoding_of_the_whole(value: Any, few: int, items: int) -> None:
    with (
        mock.patch.object(slicedjson, "FEW", few),
        mock.patch.object(slicedjson, "SLICE_ITEMS", items),
    ):
        assert dumps_sliced(value) == orjson.dumps(value)


def test_a_map_with_a_key_that_is_not_a_string_is_refused_as_orjson_refuses_it() -> None:
    value = {"a": {"b": 1}, 2: {"c": 1}}
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(value)
    with mock.patch.object(slicedjson, "FEW", 0), pytest.raises(orjson.JSONEncodeError):
        dumps_sliced(value)


def interval_body(intervals: int, agents: int) -> dict[str, Any]:
    """The shape of an ``agentIds=all&interval=5`` body."""
    return {
        "metricsTotals": metrics(1),
        "metricsByIntervals": [
            {
                "timestamp": 1_700_000_000_000 + k * 300_000,
                "metricsData": {
                    "agentsMetrics": {
                        "metricsPerAgent": {str(a): metrics(a + k) for a in range(agents)},
                        "metricsTotals": metrics(k),
                    }
                },
            }
            for k in range(intervals)
        ],
    }


@pytest.mark.parametrize(
    "body",
    [
        interval_body(288, 50),
        interval_body(3, 5_000),  # maps larger than a slice
        {"agentsMetrics": {"metricsPerAgent": {str(a): metrics(a) for a in range(10_000)}}},
        [metrics(n) for n in range(3_000)],
    ],
    ids=["many intervals", "large maps", "one large map", "a list"],
)
def test_a_large_body_is_encoded_a_slice_of_objects_at_a_time(body: Any) -> None:
    calls: list[int] = []
    real = orjson.dumps

    def counted(value: Any) -> bytes:
        text = real(value)
        calls.append(text.count(b"{") - isinstance(value, dict))  # objects within
        return text

    with mock.patch.object(slicedjson.orjson, "dumps", counted):
        text = dumps_sliced(body)
    assert text == real(body)
    assert max(calls) <= 1_024  # about 0.3 ms of metrics objects
    assert len(calls) > 1


def test_another_thread_runs_while_a_large_body_is_encoded() -> None:
    """What the slices are for: a thread that wants the interpreter gets it within a switch
    interval or so, not after the whole encoding (75-110 ms for a 44 MB body here). Counted,
    not timed: the other thread's turns while the body is encoded in slices, against while it
    is encoded whole (none: one call)."""
    body = interval_body(288, 400)
    turns = 0
    running = threading.Event()
    stop = threading.Event()

    def other() -> None:
        nonlocal turns
        running.set()
        while not stop.is_set():
            turns += 1
            time.sleep(0)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert running.wait(10)
        before = turns
        orjson.dumps(body)
        whole = turns - before
        before = turns
        dumps_sliced(body)
        sliced = turns - before
    finally:
        stop.set()
        thread.join(10)
        sys.setswitchinterval(previous)
    assert whole <= 2  # taken at most as the call began and as it ended
    assert sliced >= 5  # dozens on a quiet machine; a few at least however busy it is


def traced(build: Any) -> tuple[Any, int, int]:
    """What ``build()`` returns, the memory that code in ``slicedjson.py`` or in this file
    allocated and still holds afterwards, and the peak of everything traced meanwhile
    (tracemalloc). The memory held counts only those frames' allocations: the suite's other
    tests may leave threads running (a store's background fold), and theirs are no concern."""
    ours = [tracemalloc.Filter(True, slicedjson.__file__), tracemalloc.Filter(True, __file__)]
    tracemalloc.start()
    try:
        start = tracemalloc.take_snapshot().filter_traces(ours)
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        value = build()
        peak = tracemalloc.get_traced_memory()[1]
        end = tracemalloc.take_snapshot().filter_traces(ours)
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in end.compare_to(start, "filename"))
    return value, held, peak - before


def test_a_large_body_is_built_in_about_twice_its_size() -> None:
    """orjson's buffers keep their capacity (4 KiB at least, about ten times the text for a
    few hundred objects): kept one per piece, the pieces of an 11.9 MB body held 162 MB. The
    body grows in one buffer instead, each piece freed once copied."""
    body = interval_body(288, 60)
    text, held, _ = traced(lambda: dumps_sliced(body))
    assert text == orjson.dumps(body)
    assert held < len(text) + 4096  # the body, in an allocation of its own length
    # The peak counts every thread's allocations, so it is measured where there are no others.
    alone = (
        "from tests.test_slicedjson import dumps_sliced, interval_body, traced\n"
        "body = interval_body(288, 60)\n"
        "text, _, peak = traced(lambda: dumps_sliced(body))\n"
        "print(peak / len(text))"
    )
    ran = subprocess.run(
        [sys.executable, "-c", alone], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert float(ran.stdout) < 2.5  # the growing buffer and the body copied from it


@pytest.mark.parametrize("value", [{"a": 1}, [metrics(n) for n in range(300)]])
def test_right_sized_text_holds_its_length(value: Any) -> None:
    text, held, _ = traced(lambda: right_sized(orjson.dumps(value)))
    assert text == orjson.dumps(value)
    assert held < len(text) + 512  # the bytes object's header and the call's own few objects
    assert ndjson([value, value]) == orjson.dumps(value) + b"\n" + orjson.dumps(value)
    assert ndjson([]) == b""
