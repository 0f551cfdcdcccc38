"""A cancelled background job does not leave its blocking call running behind it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from starlette.concurrency import run_in_threadpool

from csatdist.threads import finish_in_thread


def _cancel_while_running(runner: object) -> tuple[bool, float]:
    """Cancel a task during a 0.5 s blocking call; was the call over once the task was?"""
    finished = threading.Event()

    def work() -> None:
        time.sleep(0.5)
        finished.set()

    async def main() -> tuple[bool, float]:
        task = asyncio.ensure_future(runner(work))  # type: ignore[operator]
        await asyncio.sleep(0.1)
        task.cancel()
        started = time.monotonic()
        results = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        return finished.is_set(), time.monotonic() - started

    return asyncio.run(main())


def test_run_in_threadpool_leaves_the_call_running() -> None:
    """The hazard (and the control: this test shows the other can fail)."""
    over, _ = _cancel_while_running(run_in_threadpool)
    assert not over


def test_a_cancelled_call_in_a_thread_is_waited_for() -> None:
    over, waited = _cancel_while_running(finish_in_thread)
    assert over
    assert waited >= 0.3


def test_results_and_errors_pass_through() -> None:
    assert asyncio.run(finish_in_thread(sum, [1, 2, 3])) == 6

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(finish_in_thread(fail))
