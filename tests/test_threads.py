"""A cancelled background job does not leave its blocking call running behind it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from starlette.concurrency import run_in_threadpool

from csatdist.threads import finish_in_thread, wait_event


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


def test_a_wait_cancelled_as_its_event_is_set_is_cancelled() -> None:
    """A background loop waiting for an event is cancelled at shutdown in the very iteration
    the event is set: it must end (asyncio.wait_for on Python 3.11 returned normally instead,
    the loop went on, and the shutdown waiting for it hung)."""

    async def scenario() -> str:
        event = asyncio.Event()

        async def forever() -> None:
            while True:
                await wait_event(event, 10)
                event.clear()

        task = asyncio.create_task(forever())
        await asyncio.sleep(0.01)
        event.set()
        task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), 2)
        except asyncio.CancelledError:
            return "cancelled"
        except TimeoutError:
            task.cancel()
            return "still running"
        return "ended"

    assert asyncio.run(scenario()) == "cancelled"


def test_wait_event_says_whether_the_event_was_set() -> None:
    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        timed_out = await wait_event(event, 0.01)
        asyncio.get_running_loop().call_later(0.01, event.set)
        return timed_out, await wait_event(event, 5)

    assert asyncio.run(scenario()) == (False, True)
