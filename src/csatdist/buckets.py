"""Bucket and window arithmetic: pure functions on epoch milliseconds.

Answers are counted in 5-minute buckets labelled by their end (CONTRACT.md section 1). A query
window is made of whole buckets, from the one holding ``now - timeframe`` to the one holding
``now`` (CONTRACT.md section 2, the 13:29/7-minute example of the original document).
"""

from __future__ import annotations

from dataclasses import dataclass

MINUTE_MS = 60_000
BUCKET_MS = 5 * MINUTE_MS
MAX_TIMEFRAME_MINUTES = 1440
CLOCK_SKEW_MS = 5 * MINUTE_MS
#: The shortest retention that still covers a full 1440-minute window and its partial bucket.
MIN_RETENTION_MINUTES = MAX_TIMEFRAME_MINUTES + 5


def floor_to_bucket(t_ms: int) -> int:
    """Start of the bucket holding ``t_ms``."""
    return (t_ms // BUCKET_MS) * BUCKET_MS


def bucket_end_of(t_ms: int) -> int:
    """The label of the bucket holding ``t_ms``: its (exclusive) end."""
    return floor_to_bucket(t_ms) + BUCKET_MS


@dataclass(frozen=True, slots=True)
class Window:
    """Whole buckets ``[start_ms, end_ms)``: a bucket is in iff ``start < bucket_end <= end``."""

    start_ms: int
    end_ms: int

    @property
    def first_bucket_end(self) -> int:
        return self.start_ms + BUCKET_MS

    @property
    def bucket_count(self) -> int:
        return (self.end_ms - self.start_ms) // BUCKET_MS


def window_for(now_ms: int, timeframe_minutes: int) -> Window:
    """The bucket-aligned window a query with this timeframe covers at ``now_ms``."""
    start = floor_to_bucket(now_ms - timeframe_minutes * MINUTE_MS)
    return Window(start_ms=start, end_ms=bucket_end_of(now_ms))


def interval_ends(window: Window, interval_minutes: int) -> list[int]:
    """Interval ends, oldest first: anchored at the window end, stepping back by the interval.

    The oldest interval is clipped at the window start, so it may be shorter than the others.
    """
    step = interval_minutes * MINUTE_MS
    ends = []
    end = window.end_ms
    while end > window.start_ms:
        ends.append(end)
        end -= step
    ends.reverse()
    return ends


def interval_end_of(bucket_end: int, window: Window, interval_minutes: int) -> int:
    """The end of the interval (see :func:`interval_ends`) that holds the bucket ``bucket_end``."""
    step = interval_minutes * MINUTE_MS
    return window.end_ms - ((window.end_ms - bucket_end) // step) * step
