from __future__ import annotations

from datetime import UTC, datetime

import pytest

from csatdist.buckets import (
    BUCKET_MS,
    Window,
    bucket_end_of,
    interval_end_of,
    interval_ends,
    window_for,
)


def at(hour: int, minute: int, second: int = 0, ms: int = 0, day: int = 27) -> int:
    moment = datetime(2026, 11, day, hour, minute, second, tzinfo=UTC)
    return int(moment.timestamp()) * 1000 + ms


def bucket_ends(window: Window) -> list[int]:
    return list(range(window.first_bucket_end, window.end_ms + 1, BUCKET_MS))


def test_original_example_1329_timeframe_7_uses_buckets_ending_1325_and_1330() -> None:
    window = window_for(at(13, 29), 7)
    assert bucket_ends(window) == [at(13, 25), at(13, 30)]
    assert (window.start_ms, window.end_ms) == (at(13, 20), at(13, 30))


def test_now_exactly_on_a_bucket_boundary_starts_a_new_bucket() -> None:
    window = window_for(at(13, 30), 5)
    # 13:30:00.000 belongs to the bucket [13:30, 13:35).
    assert (window.start_ms, window.end_ms) == (at(13, 25), at(13, 35))
    assert bucket_ends(window) == [at(13, 30), at(13, 35)]


def test_one_millisecond_before_a_boundary() -> None:
    window = window_for(at(13, 29, 59, 999), 1)
    assert (window.start_ms, window.end_ms) == (at(13, 25), at(13, 30))
    assert window.bucket_count == 1


def test_timeframe_1_inside_a_bucket_is_one_bucket() -> None:
    assert window_for(at(13, 27), 1).bucket_count == 1


def test_timeframe_1_just_after_a_boundary_spans_two_buckets() -> None:
    window = window_for(at(13, 30, 30), 1)
    assert (window.start_ms, window.end_ms) == (at(13, 25), at(13, 35))


def test_timeframe_1440_covers_289_buckets() -> None:
    window = window_for(at(13, 29), 1440)
    assert window.start_ms == at(13, 25, day=26)
    assert window.end_ms == at(13, 30)
    assert window.bucket_count == 289


def test_timeframe_1440_on_a_boundary_covers_289_buckets() -> None:
    window = window_for(at(13, 30), 1440)
    assert window.start_ms == at(13, 30, day=26)
    assert window.bucket_count == 289


def test_bucket_end_labels() -> None:
    assert bucket_end_of(at(13, 20)) == at(13, 25)
    assert bucket_end_of(at(13, 24, 59, 999)) == at(13, 25)
    assert bucket_end_of(at(13, 25)) == at(13, 30)


def test_interval_example_0807_timeframe_20_interval_10() -> None:
    window = window_for(at(8, 7), 20)
    assert (window.start_ms, window.end_ms) == (at(7, 45), at(8, 10))
    assert interval_ends(window, 10) == [at(7, 50), at(8, 0), at(8, 10)]


@pytest.mark.parametrize(
    ("bucket", "expected"),
    [
        ((7, 50), (7, 50)),
        ((7, 55), (8, 0)),
        ((8, 0), (8, 0)),
        ((8, 5), (8, 10)),
        ((8, 10), (8, 10)),
    ],
)
def test_each_bucket_maps_to_its_interval(
    bucket: tuple[int, int], expected: tuple[int, int]
) -> None:
    window = window_for(at(8, 7), 20)
    assert interval_end_of(at(*bucket), window, 10) == at(*expected)


def test_intervals_equal_to_buckets() -> None:
    window = window_for(at(13, 29), 60)
    ends = interval_ends(window, 5)
    assert ends == bucket_ends(window)
    assert all(interval_end_of(end, window, 5) == end for end in ends)


def test_interval_equal_to_timeframe_on_a_boundary() -> None:
    window = window_for(at(13, 30), 60)
    # 13 buckets: 12:30..13:35; interval 60 anchored at 13:35 → 12:35 and (clipped) 12:30-12:35.
    assert interval_ends(window, 60) == [at(12, 35), at(13, 35)]
